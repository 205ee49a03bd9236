"""The archive of JSON Lines batches, the contract between export and the sinks: batch folders written durably
(manifest last) and read back in order (`folders`), a batch's log fields, one shape for its exported and its
applied line (`batch_log`), their retention (`prune`, which checks against the ledger what is applied), and
the `mongoimport` command lines that load them without us (`mongoimport`).
"""
