"""The pure core: offsets, the metadata codec, ordering, failure policy, backpressure decisions
and settings. Nothing here does I/O or imports asyncio, aiokafka or FastStream."""
