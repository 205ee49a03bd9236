"""The MongoDB sink: the client and its error translation (`client`), the applier of archive batches (`applier`),
and the target's record of versions that keeps them from going backwards across re-installs (`epoch`).
"""
