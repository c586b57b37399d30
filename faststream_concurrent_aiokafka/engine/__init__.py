"""The engine: lanes, admitted messages, slots, settling, committing, rebalance and drain.

asyncio and aiokafka's public API only (private aiokafka access goes through
``compat.aiokafka``); it never imports FastStream: what runs a message is handed in as a
``Pipeline``.
"""
