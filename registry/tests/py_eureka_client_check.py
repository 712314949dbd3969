"""Drives py-eureka-client, a Eureka client this project did not write, against a tether-registry.

Run by tests/py_eureka_client.rs:

    python py_eureka_client_check.py http://127.0.0.1:PORT/eureka/ APP PORT

The library registers APP with a 1 s renewal interval and pulls the registry (it sends no JSON
Accept header, so every answer it parses is XML). The script then answers commands read from
stdin, one per line, with one line on stdout starting with "PYCHECK " followed by JSON (the
library logs to stdout too; those lines are ignored by the driver):

    discover APP2              what the library's discovery API sees of APP2 and of the registry
    wait-status APP2 ID STATUS wait until the library's own registry copy (kept up to date by its
                               delta fetches) shows instance ID of APP2 with STATUS
    stop                       wait for a fresh heartbeat, stop the client (it registers DOWN and
                               cancels), exit
"""

import asyncio
import json
import os
import sys
import time

import py_eureka_client
from py_eureka_client import eureka_basic
from py_eureka_client.eureka_client import EurekaClient


def out(obj):
    print("PYCHECK " + json.dumps(obj), flush=True)


def describe(inst):
    return {
        "instanceId": inst.instanceId,
        "app": inst.app,
        "hostName": inst.hostName,
        "ipAddr": inst.ipAddr,
        "status": inst.status,
        "overriddenstatus": inst.overriddenstatus,
        "port": inst.port.port,
        "portEnabled": inst.port.enabled,
        "securePort": inst.securePort.port,
        "securePortEnabled": inst.securePort.enabled,
        "vipAddress": inst.vipAddress,
        "secureVipAddress": inst.secureVipAddress,
        "metadata": inst.metadata,
        "dataCenterName": inst.dataCenterInfo.name,
        "dataCenterClass": inst.dataCenterInfo.className,
        "renewalIntervalInSecs": inst.leaseInfo.renewalIntervalInSecs,
        "durationInSecs": inst.leaseInfo.durationInSecs,
        "lastRenewalTimestamp": inst.leaseInfo.lastRenewalTimestamp,
        "lastDirtyTimestamp": inst.lastDirtyTimestamp,
        "actionType": inst.actionType,
    }


def describe_apps(apps):
    return {
        "versions__delta": apps.versions__delta,
        "apps__hashcode": apps.apps__hashcode,
        "apps": {a.name: [describe(i) for i in a.instances] for a in apps.applications},
    }


async def discover(client, server, target):
    full = await eureka_basic.get_applications(server)
    app = await eureka_basic.get_application(server, target)
    first_id = app.instances[0].instanceId if app.instances else ""
    one = await eureka_basic.get_app_instance(server, target, first_id)
    vip = await eureka_basic.get_vip(server, target.lower())
    delta = await eureka_basic.get_delta(server)
    cached = client.applications
    walked = await client.walk_nodes(app_name=target, service="/probe", walker=lambda url: url)
    return {
        "event": "discovered",
        "full": describe_apps(full),
        "app": {"name": app.name, "instances": [describe(i) for i in app.instances]},
        "instance": describe(one),
        "vip": describe_apps(vip),
        "delta": describe_apps(delta),
        "cached": {a.name: [[i.instanceId, i.status] for i in a.instances] for a in cached.applications},
        "walk": walked,
    }


async def wait_status(client, target, instance_id, status):
    deadline = time.monotonic() + 20
    seen = None
    while time.monotonic() < deadline:
        inst = client.applications.get_application(target).get_instance(instance_id)
        seen = inst.status if inst is not None else None
        if seen == status:
            up = [i.instanceId for i in client.applications.get_application(target).up_instances]
            return {"event": "status", "ok": True, "seen": seen, "up": up}
        await asyncio.sleep(0.05)
    return {"event": "status", "ok": False, "seen": seen}


async def own_renewal(server, app):
    own = (await eureka_basic.get_application(server, app)).instances[0]
    return own.instanceId, own.leaseInfo.lastRenewalTimestamp


async def stop(client, server, app):
    # The library's heartbeat thread keeps running after stop() and would register the instance
    # again on its next beat; stop right after a beat, so the process exits long before the next.
    instance_id, first = await own_renewal(server, app)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, now = await own_renewal(server, app)
        if now != first:
            break
        await asyncio.sleep(0.02)
    await client.stop()
    return {"event": "stopped", "instanceId": instance_id}


async def main():
    server, app, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = EurekaClient(
        eureka_server=server,
        app_name=app,
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=port,
        renewal_interval_in_secs=1,
        duration_in_secs=30,
        metadata={"role": "py-check"},
    )
    await client.start()
    out({"event": "started", "version": py_eureka_client.version})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = line.split()
        try:
            if cmd[0] == "discover":
                out(await discover(client, server, cmd[1]))
            elif cmd[0] == "wait-status":
                out(await wait_status(client, cmd[1], cmd[2], cmd[3]))
            elif cmd[0] == "stop":
                out(await stop(client, server, app))
                # Exit at once: the heartbeat thread must not get another beat in.
                os._exit(0)
            else:
                out({"event": "error", "error": f"unknown command {cmd[0]}"})
        except Exception as e:  # report, let the driver fail with the reason
            out({"event": "error", "error": f"{type(e).__name__}: {e}"})
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
