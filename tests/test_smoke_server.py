import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_two_clients_chat(server, clients):
    ana = await clients()
    await ana.login("Ana")
    luis = await clients()
    await luis.login("Luis")
    await ana.expect("system", event="join", users=["Luis"])
    luis.send(cmd="broadcast", msg="hola")
    frame = await ana.expect("broadcast")
    assert frame["from"] == "Luis" and frame["msg"] == "hola"
    frame = await luis.expect("broadcast")
    assert frame["from"] == "Luis"
