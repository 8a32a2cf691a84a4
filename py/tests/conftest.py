"""Shared helpers: engine event batches as vLLM and SGLang publish them."""

import msgpack

BLOCK = 16


def chain(first_token, blocks):
    """Token ids of `blocks` full blocks starting at `first_token`."""
    return list(range(first_token, first_token + blocks * BLOCK))


def stored(hashes, tokens, parent=None, lora_name=None):
    """A BlockStored event in vLLM 0.23's array form."""
    return ["BlockStored", hashes, parent, tokens, BLOCK, None, "GPU", lora_name]


def removed(hashes):
    return ["BlockRemoved", hashes, "GPU"]


def batch(events, dp_rank):
    """An EventBatch `[ts, events, dp_rank]` as msgpack bytes."""
    return msgpack.packb([1.5, events, dp_rank])
