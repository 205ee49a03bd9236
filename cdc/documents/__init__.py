"""Documents built from many rows: which mapped documents a batch touches (the roots its changed rows belong to),
and assembling each of them whole from one PostgreSQL snapshot, with the same encoder as table lines.
"""
