"""An independent check that MongoDB equals PostgreSQL value by value: its own rules for what each PostgreSQL
type should look like in BSON (`rules`), its own assembly of mapped documents (`documents`), and the
comparison (`run`). It never imports `encode` or `documents` (an import contract holds it), so a bug there
cannot hide itself here.
"""
