"""billd-client: typed clients of billd's HTTP API.

    from billd_client import Billd, BilldError

    billd = Billd("http://127.0.0.1:8080", api_key)
    billd.consume_usage("alice", "generations")

`Billd` is synchronous, `AsyncBilld` asynchronous; both have one method per
operation of billd's OpenAPI document and answer its models (TypedDicts in
`billd_client.models`). A refusal raises `BilldError` with billd's `code`.
"""

from ._client import AsyncBilld, Billd
from ._core import BilldError

__all__ = ["AsyncBilld", "Billd", "BilldError"]
__version__ = "0.1.0"
