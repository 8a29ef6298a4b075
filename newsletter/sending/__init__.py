"""The delivery ledger and the campaign sender: planning, sending, resuming, rate, progress.

A campaign (a digest or a one-off announcement) is sent to its readers through one
``deliveries`` row each, planned in one transaction. Senders drain the queued rows over reused
SMTP connections, in parallel, and a row becomes ``sent`` only after the server's 250.

Senders claim queued rows in batches (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL)
with a lease: ``claimed_until`` and ``claimed_by``. :class:`SendLock` says who may send:

- SQLite (one writer, one machine): one sender process at a time, an exclusive ``flock`` on a
  file beside the database. Crash safety without a commit per message: the moment a server
  answers 250, the sender appends the delivery's id to its journal file (one small write, no
  fsync: it survives the process being killed because it is already in the operating system's
  cache); the journal is folded into the database in batches (one bulk UPDATE and one commit
  per batch), and the next run folds in any journal that a killed run left behind.
- PostgreSQL: any number of sender processes on any machines. Only composing and planning a
  campaign is exclusive (an advisory lock), so two processes never create two copies of one
  digest. A journal would only help a sender on the same machine, so each 250 is recorded in
  the database at once instead: one autocommit UPDATE on the sending thread's own connection,
  with ``synchronous_commit`` off (no wait for the disk; a killed client loses nothing the
  server has acknowledged). A live sender renews its lease; a dead one's claimed rows go to
  the others when its lease runs out, or at once when the next sender on its machine finds its
  journal file unlocked.

Either way a killed sender costs at most one message per connection, the one whose reply never
arrived, which is sent again with the same Message-ID. Only a machine crash (of the sender on
SQLite, of the database server on PostgreSQL) can lose the last few marks.
"""

from __future__ import annotations

from .campaigns import retry_failed as retry_failed
from .campaigns import send_campaign as send_campaign
from .campaigns import send_each as send_each
from .campaigns import send_unfinished as send_unfinished
from .campaigns import unfinished_campaigns as unfinished_campaigns
from .history import describe_campaign as describe_campaign
from .history import fold_interrupted as fold_interrupted
from .history import list_campaigns as list_campaigns
from .ledger import confirmed_readers as confirmed_readers
from .ledger import mark_sent as mark_sent
from .ledger import plan_deliveries as plan_deliveries
from .lock import Journal as Journal
from .lock import SendLock as SendLock
from .lock import read_journal as read_journal
from .lock import recover as recover
from .lock import sending_state_dir as sending_state_dir
from .marks import _DatabaseMarks as _DatabaseMarks
from .messages import ReaderFactory as ReaderFactory
from .messages import campaign_template as campaign_template
from .messages import check_smtp as check_smtp
from .options import DIGEST as DIGEST
from .options import ID_CHUNK as ID_CHUNK
from .options import CampaignNotFoundError as CampaignNotFoundError
from .options import Progress as Progress
from .options import SendError as SendError
from .options import SendInProgressError as SendInProgressError
from .options import SendOptions as SendOptions
from .options import SendReport as SendReport
from .orchestrate import Backlog as Backlog
from .orchestrate import Composer as Composer
from .orchestrate import Confirm as Confirm
from .orchestrate import Draft as Draft
from .orchestrate import NotComposed as NotComposed
from .orchestrate import SendOutcome as SendOutcome
from .orchestrate import send_new_campaign as send_new_campaign
from .orchestrate import send_test_copy as send_test_copy
from .pace import SendPace as SendPace
from .preview import EmailPreview as EmailPreview
from .preview import preview_campaign_email as preview_campaign_email
from .processes import SenderProcesses as SenderProcesses
from .processes import WorkerProgress as WorkerProgress
