"""The remote artifact tier: signed entries in a Redis server shared by a cluster (cold path only).

Imported only on a local miss and only when CACHED_CPP_EXTENSION_REMOTE_CACHE is set; the warm path never
sees it. ``tier`` is what the pipeline calls; the other modules each hold one concept: ``url`` (the URL
with its password hidden), ``signing`` (the secret and the HMAC), ``entry`` (the entry format and the
Redis names), ``client`` (the connection and its timeouts), ``cluster_lock`` (one builder per cluster).
"""
