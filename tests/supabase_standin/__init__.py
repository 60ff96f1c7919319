"""A stand-in for Supabase's Realtime server and PostgREST, for the tests only.

``SupabaseStandIn(dsn)`` serves both on loopback over the test database, so the unmodified
``supabase`` and ``realtime`` libraries can be exercised end to end.
"""

from ._jwt import unsigned_jwt
from ._realtime import BroadcastRecord
from ._server import DEFAULT_KEY, SupabaseStandIn

__all__ = ["DEFAULT_KEY", "BroadcastRecord", "SupabaseStandIn", "unsigned_jwt"]
