"""Everything bpsync knows about BigPanda, in one place.

Each fact cites `shared/bigpanda-api.md` (§ and its confidence mark: C confirmed,
R reported, I inferred). When a live tenant disagrees, edit it here and only here.
This module is import-light on purpose: validate and plan load it without httpx.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# §1 [C]: the two documented regions. Anything else goes through base_url.
REGIONS: Final = {"us": "https://api.bigpanda.io", "eu": "https://eu-api.bigpanda.io"}


@dataclass(frozen=True)
class ApiVersion:
    """Paths and vocabulary of one API generation (§3)."""

    name: str
    enrichments: str  # collection: list (GET) and create (POST)
    jobs: str  # job status: GET {jobs}/{job_id}
    token_kind: str  # what the Bearer token must be (§2)
    name_key: str  # config key holding the table's display name (§4)
    # Top-level keys this version documents beyond `type`, `active`, `config` (SPEC §1).
    extra_keys: tuple[str, ...]

    def enrichment(self, enrichment_id: str) -> str:
        return f"{self.enrichments}/{enrichment_id}"

    def upload(self, enrichment_id: str) -> str:
        return f"{self.enrichments}/{enrichment_id}/map"

    def job(self, job_id: str) -> str:
        return f"{self.jobs}/{job_id}"


API_VERSIONS: Final = {
    # §3.2 [C S1,S3,S6]; deprecating soon but still the documented upload API.
    "v1": ApiVersion(
        name="v1",
        enrichments="/resources/v1.0/enrichments",
        jobs="/resources/v1.0/enrichment-jobs",
        token_kind="Org Token",
        name_key="map_name",
        extra_keys=(),
    ),
    # §3.1 [C S2,S5,S7]; `when` and `note` exist only here.
    "v2.1": ApiVersion(
        name="v2.1",
        enrichments="/resources/v2.1/mapping-enrichment",
        jobs="/resources/v2.1/alert-enrichments-jobs",
        token_kind="User API Key",
        name_key="name",
        extra_keys=("when", "note"),
    ),
}
DEFAULT_API_VERSION: Final = "v1"

ENRICHMENT_TYPE: Final = "mapping"  # §4 [C]
QUERY_TAG: Final = "query_tag"
RESULT_TAG: Final = "result_tag"

# §5.1 [C S1,S2]: the docs spell the charset `utf8`.
UPLOAD_CONTENT_TYPE: Final = "text/csv; charset=utf8"
JSON_CONTENT_TYPE: Final = "application/json"

# §7 [C S8]: job states.
JOB_PENDING: Final = "pending"
JOB_STARTED: Final = "started"
JOB_DONE: Final = "done"
JOB_FAILED: Final = "failed"
JOB_STATES: Final = (JOB_PENDING, JOB_STARTED, JOB_DONE, JOB_FAILED)
JOB_FINAL_STATES: Final = (JOB_DONE, JOB_FAILED)
# SPEC §5 / §7 [I]: the failure reason field is undocumented; first present wins.
JOB_REASON_FIELDS: Final = ("reason", "error", "message", "details")

# §9 [C S12]: 5 requests/second; the client keeps a margin so jitter never trips it.
SERVER_RATE_LIMIT_PER_SECOND: Final = 5
CLIENT_RATE_LIMIT_PER_SECOND: Final = 4.0
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})  # §9 [I]; 500 is not retried

# §5.2 CSV body rules.
MAX_VALUE_BYTES: Final = 32_768  # [C] "32K"; unit [I], bytes is the safe reading
MAX_FILE_BYTES: Final = 500_000_000  # [C] "500MB"; decimal MB is the safe reading
MIN_DATA_ROWS: Final = 1  # [C] header plus at least one row
ARRAY_DELIMITER: Final = "|"  # [C S3] values holding it become lists
# §12 [C C4]: the job error for a body whose last line lacks "\n".
TRUNCATED_FRAME_ERROR: Final = "Stream finished but there was a truncated final frame in the buffer"

# §11 [C S20]: alert tag names.
TAG_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]*")
TAG_NAME_MAX: Final = 64
# §11: reserved names; errors are [C S21], warnings [I].
RESERVED_TAG_NAMES: Final = frozenset(
    {"primary_property", "secondary_property", "incident_identifier", "incident_key"}
)
DISCOURAGED_TAG_NAMES: Final = frozenset({"description", "status", "timestamp", "app_key"})

# §5.3 / §10 [C S12]: organisation budgets.
MAX_MAPPING_RESULT_TAGS: Final = 200


def tag_name_problem(name: str) -> str | None:
    """Why `name` is not a valid alert tag name, or None when it is."""
    if len(name) > TAG_NAME_MAX:
        return f"tag name {name!r} is longer than {TAG_NAME_MAX} characters"
    if not TAG_NAME_RE.fullmatch(name):
        return (
            f"tag name {name!r} is not a valid BigPanda tag name "
            "(lowercase, starts with a letter, only a-z 0-9 _ -)"
        )
    if name in RESERVED_TAG_NAMES:
        return f"tag name {name!r} is reserved by BigPanda"
    return None


def job_reason(job: dict[str, object]) -> str:
    """The failure reason of a job object (SPEC §5): first known field, else the whole job."""
    for field in JOB_REASON_FIELDS:
        value = job.get(field)
        if value not in (None, ""):
            return str(value)
    return repr(job)


# ---------------------------------------------------------------------------- §15: v2.1 read
# §15.1 [C R1]: a v2.1 table is read back page by page with GET on the upload path
# (`ApiVersion.upload`); v1 documents no row read.
TABLE_READ_API_VERSIONS: Final = frozenset({"v2.1"})
READ_PAGE_PARAM: Final = "page"  # [C R1] integer, pages count from 1
READ_PER_PAGE_PARAM: Final = "per_page"  # [C R1] integer, no stated maximum
READ_FIRST_PAGE: Final = 1
READ_DEFAULT_PER_PAGE: Final = 100  # [C R1]
READ_ITEMS_KEY: Final = "items"  # [C R1] one object per row, keyed by column title
# [C R1] names the count `total_results`; the older page S17 says `total_count`: accept both,
# first present wins [I].
READ_COUNT_KEYS: Final = ("total_results", "total_count")
# §15.2 [C R2]: a v2.1 schema PATCH applies only these keys and ignores (does not refuse)
# every other one, config.name and config.fields included.
V21_PATCH_MUTABLE_KEYS: Final = frozenset({"active", "when", "note"})
# What bpsync asks for [I]: R1 states no maximum, so bpsync asks for bigger pages than the
# default (10x fewer requests under the 5 req/s limit) and never relies on getting them; a
# server that refuses the size (HTTP 400) is asked again with the documented default.
READ_REQUEST_PER_PAGE: Final = 1000


def patch_applies(api_version: str, key: str) -> bool:
    """Whether a schema PATCH of this API version applies top-level `key` (`active`, `when`,
    `note`, `config`) rather than ignoring it (§15.2: v2.1 ignores all but three keys)."""
    if api_version == "v2.1":
        return key in V21_PATCH_MUTABLE_KEYS
    return True
