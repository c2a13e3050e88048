"""The page at `/`: static files shipped in the package, under a policy that lets nothing
it shows run."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent.parent / "static"  # package data (pyproject), so an install has it
# The page is data-driven: nothing it shows may run, and everything it loads is the server's.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


class PolicedStaticFiles(StaticFiles):
    """The page's files, each under the page's policy: /static/index.html is the page too."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response


def static_files() -> StaticFiles:
    """What the app mounts at /static."""
    return PolicedStaticFiles(directory=STATIC)
