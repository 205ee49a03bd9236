"""SQL shipped with orininu-cdc; installed as the package data of ``cdc.sql``."""
