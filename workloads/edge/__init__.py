"""The edge agent: fetches a verified model bundle from the lake, caches it on local disk, serves
it with the inference server, buffers inference logs durably and uploads them exactly once."""
