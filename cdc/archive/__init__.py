"""The archive of JSON Lines batches, the contract between export and the sinks: batch folders written durably
(manifest last), read back in order, their retention (`prune`, which checks against the ledger what is
applied), and the `mongoimport` command lines that load them without us.
"""
