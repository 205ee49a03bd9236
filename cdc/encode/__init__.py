"""PostgreSQL values to MongoDB Extended JSON v2: the one rule table of PostgreSQL types (how each is selected,
converted and written), row encoding into archive lines that real `mongoimport` accepts, and the Extended JSON
parser the sinks read them back with.
"""
