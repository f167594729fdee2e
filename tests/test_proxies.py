"""The client address behind reverse proxies: forwarded headers count only from a trusted proxy, and then
only up to the right-most hop that is not itself one; every per-address limit keys on that address."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import create_app
from gateway.proxies import forwarded_hops, parse_address, resolve
from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock
from sync.config import ConfigError, load_config
from tests.conftest import make_config

LOOPBACK = "127.0.0.1/32"  # the test client's address: the "proxy" in these tests
NOW = 1_800_000_000


def networks(*cidrs: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


# -- resolving the hops ---------------------------------------------------------------------------------


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    trusted = networks("10.0.0.0/8")
    hops = ["198.51.100.9", "203.0.113.5", "10.0.0.7"]  # forged, the real client, an inner proxy

    assert resolve(ip("10.0.0.1"), hops, trusted) == ip("203.0.113.5")


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert resolve(ip("192.0.2.1"), ["203.0.113.5"], networks("10.0.0.0/8")) == ip("192.0.2.1")


def test_a_hop_that_is_no_address_ends_the_walk_at_the_last_known_one() -> None:
    trusted = networks("10.0.0.0/8")

    assert resolve(ip("10.0.0.1"), ["203.0.113.5", "unknown", "10.0.0.7"], trusted) == ip("10.0.0.7")
    assert resolve(ip("10.0.0.1"), ["_hidden"], trusted) == ip("10.0.0.1")


def test_when_every_hop_is_trusted_the_left_most_one_is_the_client() -> None:
    assert resolve(ip("10.0.0.1"), ["10.0.0.9", "10.0.0.7"], networks("10.0.0.0/8")) == ip("10.0.0.9")


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.7", "192.0.2.7"),
    (" 192.0.2.7:4711 ", "192.0.2.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("unknown", None),
    ("", None),
    ("999.1.1.1", None),
])
def test_addresses_are_read_with_or_without_a_port(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_x_forwarded_for_lists_across_headers_are_read_in_order() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.5, 10.0.0.3"), ("X-Forwarded-For", "10.0.0.7")])
    assert forwarded_hops(CIMultiDictProxy(headers)) == ["203.0.113.5", "10.0.0.3", "10.0.0.7"]


def test_forwarded_is_read_when_there_is_no_x_forwarded_for() -> None:
    headers = CIMultiDict([("Forwarded", 'for=203.0.113.5;proto=https, For="[2001:db8::7]:443"'),
                           ("Forwarded", "by=10.0.0.1")])
    assert forwarded_hops(CIMultiDictProxy(headers)) == ["203.0.113.5", "[2001:db8::7]:443", "unknown"]


def test_x_forwarded_for_wins_over_a_forwarded_header_a_client_sent_through_the_proxy() -> None:
    headers = CIMultiDict([("Forwarded", "for=198.51.100.9"), ("X-Forwarded-For", "203.0.113.5")])
    assert forwarded_hops(CIMultiDictProxy(headers)) == ["203.0.113.5"]


# -- configuration --------------------------------------------------------------------------------------


def test_trusted_proxies_take_cidrs_and_bare_addresses(tmp_path: Path) -> None:
    config = make_config(tmp_path, gateway_trusted_proxies="10.0.0.0/8, 192.0.2.7, ::1")
    assert [str(n) for n in config.gateway.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]
    assert make_config(tmp_path).gateway.trusted_proxies == ()


def test_a_trusted_proxy_that_is_no_cidr_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.trusted_proxies.*entry 2"):
        load_config(None, {"LORE_GATEWAY_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,proxy.example"})


# -- the limits key on it ---------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, aiohttp_client: Any) -> Any:
    async def build(**env: str) -> Any:
        config = make_config(tmp_path / "data", ratelimit_api="2/minute", **env)
        return await aiohttp_client(create_app(config, clock=FakeClock(), scheduler=False))

    return build


async def statuses(client: Any, forwarded_for: str, count: int) -> list[int]:
    return [(await client.get("/api/v1/projects", headers={"X-Forwarded-For": forwarded_for})).status
            for _ in range(count)]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(api: Any) -> None:
    client = await api(gateway_trusted_proxies=LOOPBACK)

    first = await statuses(client, "203.0.113.5", 3)
    second = await statuses(client, "203.0.113.6", 2)

    assert first == [401, 401, 429]
    assert second == [401, 401]


async def test_from_an_untrusted_peer_a_forwarded_address_is_ignored(api: Any) -> None:
    client = await api()

    spoofed = [(await statuses(client, f"203.0.113.{n}", 1))[0] for n in range(3)]

    assert spoofed == [401, 401, 429]  # one budget, the peer's, however the header varies


async def test_a_client_cannot_pick_its_address_by_prepending_hops_through_a_trusted_proxy(api: Any) -> None:
    client = await api(gateway_trusted_proxies=LOOPBACK)

    spoofed = [(await statuses(client, f"198.51.100.{n}, 203.0.113.5", 1))[0] for n in range(3)]

    assert spoofed == [401, 401, 429]


async def test_webhook_budgets_key_on_the_forwarded_address_behind_a_trusted_proxy(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    config = make_config(tmp_path / "data", ratelimit_webhook="1/minute", webhook_secrets="a-webhook-secret",
                         gateway_trusted_proxies=LOOPBACK)
    client = await aiohttp_client(create_app(config, clock=FakeClock(float(NOW)), scheduler=False))
    sim = GitLabSimulator(clock=FakeClock(float(NOW)), seed=3)
    sim.add_project("acme/widgets", issues=2)
    hook = sim.update_issue(1001, 1, title="x")

    async def post(forwarded_for: str) -> int:
        headers = {**hook.headers(secret="wrong"), "X-Forwarded-For": forwarded_for}
        return (await client.post("/webhooks/gitlab", data=hook.body(), headers=headers)).status

    assert [await post("203.0.113.5"), await post("203.0.113.5"), await post("203.0.113.6")] == [401, 429, 401]
