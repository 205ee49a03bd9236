"""The long-running sync: the worker loop (export, apply, retry with backoff, fences and wake-ups), following
migrations and rebuilds between cycles (`rebuild`), the batches it drives (`batches`), the periodic summary
line and the Prometheus metrics.
"""
