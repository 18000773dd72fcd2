#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into corpus/<target>/ (run once; libFuzzer
grows the corpus from them, and `cargo fuzz cmin` keeps it small)."""
import hashlib, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, items):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for item in items:
        data = item if isinstance(item, bytes) else item.encode()
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


frames = [
    '{"event":"pusher:ping","data":{}}',
    '{"event":"pusher:pong","data":{}}',
    '{"event":"pusher:subscribe","data":{"channel":"my-channel","auth":""}}',
    '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"a\\"}"}',
    '{"event":"pusher:subscribe","data":{"auth":"k:abc","channel_data":"{\\"user_id\\":\\"1\\"}","channel":"presence-x"}}',
    '{"event":"pusher:unsubscribe","data":{"channel":"private-x"}}',
    '{"event":"pusher:signin","data":{"auth":"k:abc","user_data":"{\\"id\\":\\"1\\",\\"watchlist\\":[\\"2\\"]}"}}',
    '{"event":"client-typing","channel":"private-x","data":{"a":[1,{"b":null}]}}',
    '{"event":"client-typing","channel":"presence-x","data":"raw"}',
    '{"event":"pusher:ping","data":' + "[" * 70 + "]" * 70 + "}",
    '{"event":"#server-to-user-1"}',
]
write("client_frame", frames)


def ws_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


write("frame_reader", [
    ws_frame(1, frames[2].encode()),
    ws_frame(1, b'{"a":', fin=False) + ws_frame(9, b"hi") + ws_frame(0, b"1}"),
    ws_frame(2, b"\x00\x01"),
    ws_frame(8, struct.pack(">H", 1000) + b"bye"),
    ws_frame(8, struct.pack(">H", 5000)),
    ws_frame(10, b""),
    ws_frame(1, b"x" * 5000),
    ws_frame(1, b"\xff\xfe"),
])

body = json.dumps({"name": "e", "channels": ["a", "presence-b"], "data": "{}", "socket_id": "1.2", "info": "user_count"})
batch = json.dumps({"batch": [{"name": "e", "channel": "a", "data": "x"}]})
q = "auth_key=key&auth_timestamp=1700000000&auth_version=1.0&body_md5=" + hashlib.md5(body.encode()).hexdigest() + "&auth_signature=00"
write("api_request", [
    "POST\xff/apps/1/events\xff" + q + "\xff" + body,
    "POST\xff/apps/1/batch_events\xffauth_key=key\xff" + batch,
    "GET\xff/apps/1/channels\xfffilter_by_prefix=presence-&info=user_count\xff",
    "GET\xff/apps/1/channels/%23server-to-user-1/users\xffauth_key=key\xff",
    "POST\xff/users/7/terminate_connections\xffauth_key=key\xff",
    "POST\xff/apps/1/events\xff\xff" + '{"name":"e","channel":"a","data":' + "[" * 70 + "]" * 70 + "}",
])

write("presence_data", [
    '{"user_id":"7","user_info":{"name":"A"}}',
    '{"user_id":10}',
    '{"id":"12345","user_info":{"n":1},"watchlist":["1","2"]}',
    '{"id":"a b"}',
    '{"user_id":"1","user_info":' + "[" * 70 + "]" * 70 + "}",
])


def envelope(kind, exclude, origin, app, channel, payload):
    b = b"H\x01" + bytes([kind, 1 if exclude is not None else 0]) + struct.pack(">Q", 42)
    if exclude is not None:
        b += exclude.to_bytes(16, "big")
    b += bytes([len(origin)]) + origin
    b += struct.pack(">H", len(app)) + app
    b += struct.pack(">H", len(channel)) + channel
    return b + payload


write("bus_envelope", [
    envelope(0, (12 << 64) | 34, b"node-1#00ff", b"app", b"presence-a", b'{"event":"x"}'),
    envelope(1, None, b"n", b"a", b"#server-to-user-7", b""),
    envelope(0, None, b"n", b"a", b"#watchlist-7", b"{}"),
    envelope(7, None, b"n", b"a", b"c", b""),
])
