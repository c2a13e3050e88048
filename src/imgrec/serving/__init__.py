"""Answering queries with the trained model and the catalog: `query.Recommender`, the API both
the command line (`imgrec.cli`) and the server (`imgrec.server`) call.

May import: every sub-package above (pipeline, data, training, recommender); never cli or
server.
"""
