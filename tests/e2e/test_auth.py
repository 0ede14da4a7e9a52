"""Only the owner, only the right role: authentication and authorization across the four
services, as real processes against the real broker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from services.user.config import UserSettings
from services.user.keystore import Keystore
from shared.runtime.auth import mint
from tests.e2e.conftest import RunningStack
from tests.helpers import eventually, random_email, read_topic, unique

pytestmark = pytest.mark.e2e

ISSUER = "event-driven-shop"
TOKEN_TTL = timedelta(minutes=15)


@dataclass
class Person:
    id: str
    email: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def http(running: RunningStack) -> Iterator[dict[str, httpx.Client]]:
    clients = {
        name: httpx.Client(base_url=service.url, timeout=10)
        for name, service in running.stack.services.items()
    }
    yield clients
    for client in clients.values():
        client.close()


def token_for(http: dict[str, httpx.Client], email: str, password: str) -> httpx.Response:
    return http["user"].post("/token", data={"username": email, "password": password})


def sign_up(http: dict[str, httpx.Client], name: str) -> Person:
    email, password = random_email(), unique("pw-") + "-secret"
    created = http["user"].post("/users", json={"name": name, "email": email, "password": password})
    assert created.status_code == 201, created.text
    token = token_for(http, email, password)
    assert token.status_code == 200, token.text
    return Person(created.json()["id"], email, password, token.json()["access_token"])


@pytest.fixture(scope="module")
def operator(running: RunningStack, http: dict[str, httpx.Client]) -> Person:
    password = running.stack.operator_password_file.read_text().strip()
    token = token_for(http, "operator@example.com", password)
    assert token.status_code == 200, token.text
    return Person("", "operator@example.com", password, token.json()["access_token"])


@pytest.fixture(scope="module")
def product(http: dict[str, httpx.Client], operator: Person) -> str:
    """A product with stock, known to order and inventory."""
    created = eventually(
        lambda: _ok(
            http["product"].post(
                "/products", json={"name": "Gear", "price_cents": 100}, headers=operator.auth
            )
        ),
        message="the product service learns the signing keys",
    )
    product_id = created.json()["id"]
    eventually(
        lambda: _ok(
            http["inventory"].put(
                f"/stock/{product_id}", json={"available": 1000}, headers=operator.auth
            )
        ),
        message="inventory learns the product",
    )
    return str(product_id)


def _ok(response: httpx.Response) -> httpx.Response | None:
    return response if response.status_code < 300 else None


def place(http: dict[str, httpx.Client], person: Person, product: str) -> httpx.Response:
    """Place an order, waiting while the order service has not yet learnt the keys (503),
    the user (401 unknown user) or the product (422)."""
    body = {"items": [{"product_id": product, "quantity": 1}]}

    def attempt() -> httpx.Response | None:
        response = http["order"].post("/orders", json=body, headers=person.auth)
        if response.status_code == 202:
            return response
        assert response.status_code in (401, 422, 503), response.text
        assert response.status_code != 401 or "unknown user" in response.text, response.text
        return None

    return eventually(attempt, message="order learns the keys, the user and the product")


def test_one_user_cannot_see_or_touch_another_users_orders_or_notifications(
    http: dict[str, httpx.Client], product: str
) -> None:
    ada, bob = sign_up(http, "Ada"), sign_up(http, "Bob")
    order = place(http, ada, product).json()
    assert order["user_id"] == ada.id
    order_id = order["id"]

    assert http["order"].get(f"/orders/{order_id}", headers=ada.auth).status_code == 200
    for method, path in [
        ("GET", f"/orders/{order_id}"),
        ("POST", f"/orders/{order_id}/cancel"),
        ("GET", f"/orders/{order_id}/events"),
    ]:
        response = http["order"].request(method, path, headers=bob.auth)
        assert response.status_code == 404, (method, path, response.text)
    assert [o["id"] for o in http["order"].get("/orders", headers=bob.auth).json()] == []
    assert [o["id"] for o in http["order"].get("/orders", headers=ada.auth).json()] == [order_id]
    assert http["order"].get(f"/orders/{order_id}", headers=ada.auth).json()["status"] != (
        "CANCELLED"
    )

    eventually(
        lambda: http["user"].get(f"/users/{ada.id}/notifications", headers=ada.auth).json(),
        message="ada is told the outcome",
    )
    for path in (f"/users/{ada.id}/notifications", f"/users/{ada.id}"):
        assert http["user"].get(path, headers=bob.auth).status_code == 404
    assert http["user"].get("/users/me", headers=bob.auth).json()["id"] == bob.id


def test_writing_stock_and_products_needs_the_operator_scope(
    http: dict[str, httpx.Client], operator: Person, product: str
) -> None:
    ada = sign_up(http, "Ada")
    stock, new = f"/stock/{product}", {"name": "Sprocket", "price_cents": 5}
    assert http["inventory"].put(stock, json={"available": 1}, headers=ada.auth).status_code == 403
    assert http["inventory"].put(stock, json={"available": 1}).status_code == 401
    assert http["product"].post("/products", json=new, headers=ada.auth).status_code == 403
    assert http["product"].post("/products", json=new).status_code == 401
    assert http["inventory"].put(stock, json={"available": 1000}, headers=operator.auth).is_success
    assert http["inventory"].get(stock).status_code == 200  # reads stay public
    assert http["product"].get("/products").status_code == 200


def _signing_key(running: RunningStack) -> tuple[str, Ed25519PrivateKey]:
    """The user service's signing key, read from its database and opened with its
    key-encryption key (only a test may)."""
    env = running.stack.services["user"].env
    engine = create_engine(env["USER_DATABASE_URL"])
    with engine.connect() as connection:
        kid, sealed = connection.execute(
            text(
                "SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL"
                " ORDER BY created_at DESC"
            )
        ).first()  # type: ignore[misc]
    engine.dispose()
    assert sealed.startswith("v1:") and "PRIVATE KEY" not in sealed, "stored sealed"
    keystore = Keystore.from_files(
        env["USER_KEY_ENCRYPTION_KEY_FILE"], env["USER_KEYSET_SIGNING_KEY_FILE"]
    )
    return kid, keystore.private_key(kid, sealed)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, str], claims: dict[str, object], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(signature)


def bad_tokens(running: RunningStack, ada: Person) -> dict[str, str | None]:
    kid, key = _signing_key(running)
    now = datetime.now(UTC)
    claims = {"sub": ada.id, "scope": "", "iss": ISSUER, "iat": int(now.timestamp())}
    claims["exp"] = int((now + timedelta(minutes=5)).timestamp())
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = _unsigned({"alg": "HS256", "kid": kid, "typ": "JWT"}, claims)
    signature = hmac.new(public_pem, confused.rsplit(".", 1)[0].encode(), hashlib.sha256).digest()
    head, body, _ = ada.token.split(".")
    tampered_claims = {**orjson.loads(base64.urlsafe_b64decode(body + "==")), "sub": "someone"}
    return {
        "no token": None,
        "expired": mint(key, kid, ada.id, issuer=ISSUER, ttl=timedelta(minutes=-1)),
        "malformed": "not.a.jwt",
        "alg none": _unsigned({"alg": "none", "kid": kid}, claims),
        "HS256 with the public key": confused.rsplit(".", 1)[0] + "." + _b64(signature),
        "unknown kid": mint(
            Ed25519PrivateKey.generate(), "k-unknown", ada.id, issuer=ISSUER, ttl=timedelta(hours=1)
        ),
        "another issuer": mint(key, kid, ada.id, issuer="someone-else", ttl=timedelta(minutes=5)),
        "tampered payload": ".".join(
            [head, _b64(json.dumps(tampered_claims).encode()), ada.token.split(".")[2]]
        ),
        "unknown user": mint(key, kid, unique("nobody"), issuer=ISSUER, ttl=timedelta(minutes=5)),
        "a lifetime over the maximum": mint(key, kid, ada.id, issuer=ISSUER, ttl=timedelta(days=1)),
        "issued in the future": mint(
            key, kid, ada.id, issuer=ISSUER, ttl=TOKEN_TTL, now=now + timedelta(minutes=10)
        ),
    }


def test_bad_credentials_are_a_clear_401_and_publish_nothing(
    running: RunningStack, http: dict[str, httpx.Client], product: str
) -> None:
    ada = sign_up(http, "Ada")
    place(http, ada, product)  # order knows ada
    marker = unique("never-ordered")
    for case, token in bad_tokens(running, ada).items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"items": [{"product_id": marker, "quantity": 1}]}
        response = http["order"].post("/orders", json=body, headers=headers)
        assert response.status_code == 401, (case, response.status_code, response.text)
        challenge = response.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer"), case
        if token:
            assert 'error="invalid_token"' in challenge, case
        mine = http["user"].get("/users/me", headers=headers)
        assert mine.status_code == 401, (case, mine.text)

    sentinel = place(http, ada, product).json()["id"]
    records = read_topic(
        running.stack.bootstrap,
        running.topic("orders"),
        until=lambda ms: any(sentinel.encode() in (m.value() or b"") for m in ms),
    )
    assert any(sentinel.encode() in (m.value() or b"") for m in records)
    assert not any(marker.encode() in (m.value() or b"") for m in records)


def test_a_wrong_password_and_an_unknown_email_get_the_same_401(
    http: dict[str, httpx.Client],
) -> None:
    ada = sign_up(http, "Ada")
    wrong = token_for(http, ada.email, "not-her-password")
    unknown = token_for(http, random_email(), "not-her-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


def test_guessing_passwords_is_rate_limited_per_account(http: dict[str, httpx.Client]) -> None:
    ada = sign_up(http, "Ada")
    answers = [token_for(http, ada.email, f"guess-{n}") for n in range(15)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert {r.status_code for r in answers} <= {401, 429}


def _key_age(running: RunningStack, kid: str) -> timedelta:
    engine = create_engine(running.stack.services["user"].env["USER_DATABASE_URL"])
    with engine.connect() as connection:
        created = connection.execute(
            text("SELECT created_at FROM signing_keys WHERE kid = :kid"), {"kid": kid}
        ).scalar_one()
    engine.dispose()
    if isinstance(created, str):  # SQLite hands back its text
        created = datetime.fromisoformat(created)
    return datetime.now(UTC) - created.replace(tzinfo=created.tzinfo or UTC)


def test_a_rotated_key_signs_new_tokens_and_the_old_ones_stay_valid(
    running: RunningStack, http: dict[str, httpx.Client], operator: Person, product: str
) -> None:
    ada = sign_up(http, "Ada")
    old_kid = json.loads(base64.urlsafe_b64decode(ada.token.split(".")[0] + "=="))["kid"]
    propagation = timedelta(seconds=UserSettings().key_propagation_seconds)
    eventually(
        lambda: _key_age(running, old_kid) >= propagation,
        message="the signing key is older than the propagation time, as in any running shop",
    )
    assert http["user"].post("/keys/rotate", headers=ada.auth).status_code == 403
    assert http["user"].post("/keys/rotate", headers=operator.auth).status_code == 204

    def kid_of(token: str) -> str:
        return str(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"])

    assert kid_of(token_for(http, ada.email, ada.password).json()["access_token"]) == old_kid, (
        "the new key does not sign before the other services could learn it"
    )

    def signed_by_a_new_key() -> str | None:
        token = str(token_for(http, ada.email, ada.password).json()["access_token"])
        return token if kid_of(token) != old_kid else None

    fresh = eventually(
        signed_by_a_new_key, timeout=60, interval=1, message="the new key signs once propagated"
    )
    new_kid = kid_of(fresh)
    kids = {key["kid"] for key in http["user"].get("/.well-known/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= kids
    place(http, ada, product)  # the old token, still valid
    renewed = Person(ada.id, ada.email, ada.password, fresh)
    eventually(
        lambda: http["order"].get("/orders", headers=renewed.auth).status_code == 200,
        message="order learns the new key from its event",
    )


def test_swagger_ui_gets_its_token_from_the_user_service(http: dict[str, httpx.Client]) -> None:
    for name in ("order", "inventory", "product", "user"):
        schemes = http[name].get("/openapi.json").json()["components"]["securitySchemes"]
        (scheme,) = schemes.values()
        assert scheme["type"] == "oauth2"
        assert scheme["flows"]["password"]["tokenUrl"].endswith("/token"), name


def test_no_log_holds_a_password_or_a_token(
    running: RunningStack, http: dict[str, httpx.Client], product: str
) -> None:
    ada = sign_up(http, "Ada")
    place(http, ada, product)
    token_for(http, ada.email, "a-wrong-password")
    http["order"].get("/orders", headers={"Authorization": "Bearer not.a.token"})
    logs = "".join(
        service.log_file.read_text(errors="replace") for service in running.stack.services.values()
    )
    for secret in (ada.password, ada.token, ada.token.split(".")[2], "a-wrong-password"):
        assert secret not in logs
