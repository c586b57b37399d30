"""FastStream integration: the middleware, the subscribers' wiring, the lifecycle and the
rebalance listener, on top of the engine."""
