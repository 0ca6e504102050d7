"""A small Django project, written here into a temporary directory, migrated, its static
files collected and a superuser made, then served by `forkd serve project.wsgi:application`
as a Django user would in production: DEBUG off, SQLite, the admin.

Static files: WhiteNoise's middleware and its compressed, hashed storage, the way Django's
own deployment how-to and most production setups on an application server serve them
(`forkd serve` mounts one application, so forkd.web.static beside Django would need a
hand-made tap; WhiteNoise needs no change to how the project is run, sets far-future cache
headers on hashed names, and hands the file to the server as `wsgi.file_wrapper`, which
forkd sends by sendfile).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import urllib3

from forkd.testing import RunningForkd, forkd_env, free_port
from tests.apps import framing
from tests.apps.framing import LENGTH, NONE, Case
from tests.apps.serverlog import ServerLog

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("django_admin")]

USERNAME, PASSWORD = "admin", "correct horse battery staple"

SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "only-for-forkd-tests-" + "x" * 40
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "project.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
# Django's testing docs: a fast hasher for tests (the default PBKDF2 costs ~0.5 s a login)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

URLS = """
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

WSGI = """
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()
"""

# what `manage.py migrate`, `collectstatic` and `createsuperuser` do, in one interpreter
SET_UP = f"""
import django
from django.core.management import call_command

django.setup()
call_command("migrate", interactive=False, verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
from django.contrib.auth.models import User
User.objects.create_superuser({USERNAME!r}, "admin@example.com", {PASSWORD!r})
"""


def write_project(directory: Path) -> None:
    package = directory / "project"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS)
    (package / "urls.py").write_text(URLS)
    (package / "wsgi.py").write_text(WSGI)
    env = dict(forkd_env([str(directory)]), DJANGO_SETTINGS_MODULE="project.settings")
    done = subprocess.run(
        [sys.executable, "-c", SET_UP],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


class Browser:
    """What a browser keeps between requests to one site: its cookies."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.cookies: dict[str, str] = {}
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=30), retries=False)

    def request(
        self, method: str, path: str, fields: dict[str, str] | None = None, **headers: str
    ) -> urllib3.BaseHTTPResponse:
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        form: dict[str, Any] = {}
        if fields is not None:  # a form's own application/x-www-form-urlencoded
            form = {"fields": fields, "encode_multipart": False}
        response = self.http.request(
            method, self.base + path, headers=headers, redirect=False, **form
        )
        for value in response.headers.getlist("Set-Cookie"):
            for name, morsel in SimpleCookie(value).items():
                self.cookies[name] = morsel.value
        return response


def hidden_token(page: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found is not None, page[:2000]
    return found.group(1)


class Served:
    def __init__(self, port: int, forkd: RunningForkd, directory: Path) -> None:
        self.port = port
        self.forkd = forkd
        self.directory = directory
        self.log = ServerLog(forkd)


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("django")
    write_project(directory)
    port = free_port()
    app = "project.wsgi:application"
    with RunningForkd.serving(directory, app, "--bind", f"127.0.0.1:{port}") as forkd:
        served = Served(port, forkd, directory)
        yield served
    assert forkd.returncode == 0, forkd.log()
    served.log.check()


@pytest.fixture(autouse=True)
def clean_log(served: Served) -> Iterator[None]:
    served.log.check()  # what the server logged since the last look (its start, or a test)
    yield
    served.log.check()


def test_the_admin_sends_a_stranger_to_its_login_page(served: Served) -> None:
    response = Browser(served.port).request("GET", "/admin/")
    assert response.status == 302
    assert response.headers["Location"] == "/admin/login/?next=/admin/"


def test_the_login_page_renders_its_form_and_sets_the_csrf_cookie(served: Served) -> None:
    browser = Browser(served.port)
    response = browser.request("GET", "/admin/login/?next=/admin/")
    page = response.data.decode()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    assert '<form action="/admin/login/?next=/admin/" method="post" id="login-form">' in page
    assert 'name="username"' in page and 'name="password"' in page and hidden_token(page)
    assert "csrftoken" in browser.cookies


def test_logging_in_with_the_csrf_token_opens_the_admin(served: Served) -> None:
    browser = Browser(served.port)
    page = browser.request("GET", "/admin/login/?next=/admin/").data.decode()
    fields = {"username": USERNAME, "password": PASSWORD, "next": "/admin/"}
    fields["csrfmiddlewaretoken"] = hidden_token(page)
    login = browser.request("POST", "/admin/login/?next=/admin/", fields)
    assert login.status == 302 and login.headers["Location"] == "/admin/", login.data[:2000]
    assert "sessionid" in browser.cookies
    index = browser.request("GET", "/admin/")
    assert index.status == 200
    text = index.data.decode()
    assert "Site administration" in text and f"<strong>{USERNAME}</strong>" in text
    users = browser.request("GET", "/admin/auth/user/")
    assert users.status == 200 and f">{USERNAME}</a>" in users.data.decode()


def test_a_login_without_the_csrf_token_is_forbidden(served: Served) -> None:
    """The token is what let the login above in: without it, Django's CSRF check says no."""
    browser = Browser(served.port)
    browser.request("GET", "/admin/login/")  # the cookie, but no form field
    fields = {"username": USERNAME, "password": PASSWORD}
    response = browser.request("POST", "/admin/login/", fields)
    assert response.status == 403 and "sessionid" not in browser.cookies


def test_a_wrong_password_renders_the_form_again(served: Served) -> None:
    browser = Browser(served.port)
    page = browser.request("GET", "/admin/login/").data.decode()
    fields = {"username": USERNAME, "password": "wrong", "csrfmiddlewaretoken": hidden_token(page)}
    response = browser.request("POST", "/admin/login/", fields)
    assert response.status == 200 and "sessionid" not in browser.cookies
    assert "Please enter the correct username and password" in response.data.decode()


def stylesheet(served: Served) -> str:
    """The admin's base.css as the login page links it: its hashed, collected name."""
    page = Browser(served.port).request("GET", "/admin/login/").data.decode()
    found = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page)
    assert found is not None, "the page links the hashed stylesheet"
    return found.group(1)


def test_the_admin_stylesheet_is_served_from_the_collected_static_files(served: Served) -> None:
    path = stylesheet(served)
    on_disk = (served.directory / "staticfiles" / path.removeprefix("/static/")).read_bytes()
    browser = Browser(served.port)
    plain = browser.request("GET", path, **{"Accept-Encoding": "identity"})
    assert plain.status == 200 and plain.data == on_disk
    assert plain.headers["Content-Type"].startswith("text/css")
    assert int(plain.headers["Content-Length"]) == len(on_disk)
    assert "immutable" in plain.headers["Cache-Control"], "a hashed name is cached for ever"
    zipped = browser.http.request(
        "GET", browser.base + path, headers={"Accept-Encoding": "gzip"}, decode_content=False
    )
    assert zipped.status == 200 and zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == on_disk


def test_django_responses_through_h11(served: Served) -> None:
    """The login page, the stylesheet (by sendfile), its HEAD, 304 and a range of it,
    one by one and pipelined on one connection each."""
    path = stylesheet(served)
    on_disk = (served.directory / "staticfiles" / path.removeprefix("/static/")).read_bytes()
    browser = Browser(served.port)
    etag = browser.request("HEAD", path, **{"Accept-Encoding": "identity"}).headers["ETag"]
    identity = (("Accept-Encoding", "identity"),)
    ranged = (("Range", "bytes=10-19"), *identity)
    cases = [
        Case("GET", "/admin/login/", 200, LENGTH),
        Case("GET", path, 200, LENGTH, on_disk, identity),
        framing.head_of(Case("GET", path, 200, LENGTH, None, identity)),
        Case("GET", path, 304, NONE, b"", (("If-None-Match", etag), *identity)),
        Case("GET", path, 206, LENGTH, on_disk[10:20], ranged),
        Case("GET", "/admin/", 302, LENGTH, b""),
        Case("GET", "/static/admin/css/missing.css", 404, LENGTH),
        Case("GET", "/admin/login/", 200, LENGTH),
    ]
    framing.one_by_one(served.port, cases)
    framing.pipelined(served.port, cases)
