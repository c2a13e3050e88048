"""The recommender over HTTP, for `python -m imgrec serve`: FastAPI on uvicorn.

    GET  /api/health                  status, catalog size, the model file and its md5
    POST /api/recommend?top_k=K       an image (the body, or multipart field `image`): top-k
    POST /api/classify                an image: its class
    GET  /api/items?label=&flag=      a page of the catalog, filtered by class or audit flag
    GET  /api/items/{row_id}          an item: label, split, stored top-k, audit flags
    GET  /api/items/{row_id}/image    the item's prepared pixels as PNG
    GET  /api/map                     every item's place on the catalog map, class, flags
    GET  /api/review                  the audit's findings to review, the decisions so far
    POST /api/review                  decisions (JSON) to labels/corrections.csv (--review)
    GET  /                            the page (static files shipped in the package)
    GET  /docs, /openapi.json         the API, documented by FastAPI

One job per module: `config` (what to serve and how, checked before anything loads),
`state` (the outputs a worker serves), `guards` (what a request must pass: upload cap,
token), `api`, `review` and `page` (the routes), `app` (the factory that puts them together:
register a new router in `app.API_ROUTERS`), `runner` (uvicorn).

Routes are thin: every answer comes from `query`, the functions the CLI prints, so an
answer over HTTP is the same bits as `recommend --json` / `classify --json` for that one
image. Each worker process loads the outputs once (`Served.load`) and answers one query at
a time: torch spreads one forward pass over every core already, and embedding concurrent
queries as one batch would change their bits (benchmarks/RESULTS.md, "Serving").

Safe by default: localhost only unless a token is set or explicitly waived (`ServeConfig`);
a body over the upload cap is refused on its Content-Length before any of it is read, or as
it streams when it has none; the decoder decides the format from the bytes (never the
client's content type), with the catalog's own limits; nothing a request holds names a file
on the server; no response carries a traceback.
"""

from imgrec.server.app import API_ROUTERS, create_app
from imgrec.server.config import ServeConfig
from imgrec.server.runner import serve
from imgrec.server.state import Served

__all__ = ["API_ROUTERS", "ServeConfig", "Served", "create_app", "serve"]
