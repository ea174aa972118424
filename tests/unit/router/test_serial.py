"""Serial pipelines and direct invocation on the router: which headers each step gets, how a failing step is
named, and how TargetContainerHostname is checked. The containers are small HTTP servers on unix sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelhost.errors import ModelInvocationError, ValidationError
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoke import InvokeRequest, Router, check_target_container
from modelhost.router.invoker import HttpInvoker, Invoker
from modelhost.router.serial import SerialInvoker, step_headers
from modelhost.router.table import ContainerRoute, EndpointRoute, InstanceHandle, RouteTable, VariantRoute

SERIAL = ContainerRoute(("a", "b", "c"), direct=False)
DIRECT = ContainerRoute(("a", "b"), direct=True)


def test_only_the_last_step_gets_the_clients_accept() -> None:
    assert step_headers(0, 3, b"text/csv", b"application/json") == (b"text/csv", None)
    assert step_headers(1, 3, b"text/x", b"application/json") == (b"text/x", None)
    assert step_headers(2, 3, b"text/y", b"application/json") == (b"text/y", b"application/json")
    assert step_headers(1, 2, None, None) == (None, None)


@pytest.mark.parametrize(
    ("containers", "target", "error"),
    [
        (None, None, None),
        (SERIAL, None, None),
        (DIRECT, "b", None),
        (DIRECT, None, "needs TargetContainerHostname, one of a, b"),
        (DIRECT, "z", "TargetContainerHostname z is not a container of endpoint ep; its containers are a, b"),
        (SERIAL, "a", "cannot name a TargetContainerHostname"),
        (None, "a", "cannot name a TargetContainerHostname"),
    ],
)
def test_target_container_hostname(
    containers: ContainerRoute | None, target: str | None, error: str | None
) -> None:
    if error is None:
        check_target_container("ep", containers, target)
        return
    with pytest.raises(ValidationError) as info:
        check_target_container("ep", containers, target)
    assert error in info.value.message


Reply = tuple[int, bytes, bytes]  # status, content type, body
Step = Callable[[bytes, bytes, bytes], Reply]  # (content type, accept, body) -> reply


async def _container(path: str, step: Step) -> asyncio.AbstractServer:
    """A container that answers POST /invocations with ``step`` of the request's type, accept and body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            body = await reader.readexactly(int(headers[b"content-length"]))
            status, content_type, out = step(
                headers.get(b"content-type", b"-"), headers.get(b"accept", b"-"), body
            )
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (status, content_type, len(out), out)
            )
            await writer.drain()

    return await asyncio.start_unix_server(handle, path)


def _tagging(name: bytes) -> Step:
    """Appends what it was sent; answers in a type of its own. Fails with 415 on a body holding "bad"."""

    def step(content_type: bytes, accept: bytes, body: bytes) -> Reply:
        if b"bad" in body and name == b"b":
            return 415, b"text/plain", b"b cannot read " + content_type
        return 200, b"type/" + name, body + b"|" + name + b"<" + content_type + b"," + accept

    return step


async def _with_router(
    tmp_path: Path, route: ContainerRoute, test: Callable[[Router], Awaitable[None]]
) -> None:
    servers = []
    invokers: dict[str, Invoker] = {}
    for name in route.hostnames:
        path = str(tmp_path / f"{name}.sock")
        servers.append(await _container(path, _tagging(name.encode())))
        invokers[name] = HttpInvoker(InstanceClient(unix_path=path))
    client: Invoker = invokers["a"] if route.direct else SerialInvoker(list(invokers.items()))
    handle = InstanceHandle("i-1", "v", client, "arn:log", containers=invokers)
    table = RouteTable()
    table.publish(EndpointRoute("ep", (VariantRoute("v", 1.0, (handle,), None, route),), 5.0))
    try:
        await test(Router(table, "000000000000", 8))
    finally:
        for invoker in invokers.values():
            await invoker.close()
        for server in servers:
            server.close()


def _request(body: bytes, target: str | None = None) -> InvokeRequest:
    return InvokeRequest("ep", body, b"text/csv", b"application/json", None, None, None, None, target)


def test_each_response_is_the_next_request(tmp_path: Path) -> None:
    async def test(router: Router) -> None:
        result = await router.invoke(_request(b"x"))
        # Each step got the previous step's response type; only the last got the client's Accept.
        assert result.body == b"x|a<text/csv,-|b<type/a,-|c<type/b,application/json"
        assert result.content_type == "type/c"
        assert [s.container for s in result.steps] == ["a", "b", "c"]
        assert all(s.status == 200 and s.latency_us > 0 for s in result.steps)

        with pytest.raises(ModelInvocationError) as info:
            await router.invoke(_request(b"bad"))
        err = info.value
        assert err.container == "b" and err.original_status == 415
        assert err.original_message == "b cannot read type/a"
        assert (
            'from b (step 2 of 3 of the serial pipeline) with message "b cannot read type/a"' in err.message
        )

    asyncio.run(_with_router(tmp_path, SERIAL, test))


def test_direct_invocation_runs_only_the_target(tmp_path: Path) -> None:
    async def test(router: Router) -> None:
        result = await router.invoke(_request(b"x", target="b"))
        assert result.body == b"x|b<text/csv,application/json"
        assert result.container == "b" and result.steps == ()
        with pytest.raises(ValidationError):
            await router.invoke(_request(b"x"))
        with pytest.raises(ModelInvocationError) as info:
            await router.invoke(_request(b"bad", target="b"))
        assert info.value.container == "b"
        assert 'from b with message "b cannot read text/csv"' in info.value.message

    asyncio.run(_with_router(tmp_path, DIRECT, test))
