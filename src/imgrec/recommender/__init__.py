"""The "more like this" recommender: the catalog's vectors (`embed`, `kept_vectors`), nearest-
neighbour search (`neighbors`, `catalog`, `recommend`, `recommendations`), the audit and its
review (`audit`, `audit_report`, `review`), the map (`catalog_map`, `map_coordinates`) and
the figure (`figure`, `plotting`).

May import: imgrec's root modules, `imgrec.pipeline`, `imgrec.data`, `imgrec.training`;
never serving, cli or server.
"""
