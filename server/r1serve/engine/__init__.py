"""The inference engine: sequences, paged KV block manager, scheduler, sampler and the engine loop."""
