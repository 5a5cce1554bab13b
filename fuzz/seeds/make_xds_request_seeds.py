#!/usr/bin/env python3
"""Writes the seed inputs of the xds_request fuzz target (protobuf by hand, no dependency):
first requests of a sidecar and a gateway of the example mesh, SotW and delta, an ACK and a
NACK. Run from fuzz/seeds: python3 make_xds_request_seeds.py"""
import os


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def value_str(s):  # google.protobuf.Value{string_value}
    return field(3, s)


def struct(pairs):  # google.protobuf.Struct{fields: map<string, Value>}
    return b"".join(field(1, field(1, k) + field(2, value_str(v))) for k, v in pairs)


def node(node_id, pairs):  # envoy.config.core.v3.Node{id, cluster, metadata}
    return field(1, node_id) + field(2, "causeway") + field(3, struct(pairs))


def status(msg):  # google.rpc.Status{code, message}
    return varint(1 << 3) + varint(3) + field(2, msg)


SIDECAR = [
    ("CAUSEWAY_CLUSTER", "alpha"),
    ("CAUSEWAY_NAMESPACE", "demo"),
    ("CAUSEWAY_WORKLOAD", "client"),
    ("CAUSEWAY_ROLE", "sidecar"),
    ("CAUSEWAY_NETWORK", "net-a"),
    ("CAUSEWAY_APP_ADDRESS", "127.1.0.10"),
    ("CAUSEWAY_OUTBOUND_CIDR", "127.200.0.0/16"),
]
GATEWAY = [
    ("CAUSEWAY_CLUSTER", "gamma"),
    ("CAUSEWAY_WORKLOAD", "gateway"),
    ("CAUSEWAY_ROLE", "gateway"),
]
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"

# DiscoveryRequest: version_info=1 node=2 resource_names=3 type_url=4 response_nonce=5 error_detail=6
# DeltaDiscoveryRequest: node=1 type_url=2 subscribe=3 unsubscribe=4 initial_versions=5 nonce=6 error_detail=7
seeds = {
    "sotw-sidecar-first": field(2, node("sidecar~client", SIDECAR)) + field(4, CDS),
    "sotw-gateway-first": field(2, node("gateway~gamma", GATEWAY)) + field(4, LDS),
    "sotw-eds-ack": field(1, "v1") + field(3, "outbound|80||echo.demo") + field(4, EDS) + field(5, "1"),
    "sotw-nack": field(1, "v0") + field(4, LDS) + field(5, "2") + field(6, status("listener rejected")),
    "delta-sidecar-first": field(1, node("sidecar~client", SIDECAR)) + field(2, CDS)
    + field(5, field(1, "outbound|80||echo.demo") + field(2, "abc")),
    "delta-gateway-first": field(1, node("gateway~gamma", GATEWAY)) + field(2, LDS) + field(3, "*"),
    "delta-nack": field(2, EDS) + field(4, "x") + field(6, "3") + field(7, status("bad")),
}
os.makedirs("xds_request", exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join("xds_request", name), "wb") as f:
        f.write(data)
