"""picamd on an MQTT broker, with Home Assistant discovery (on when `mqtt.host` is set).

One module per job:
- `topics.py`: every topic name, region names as topic levels, the checks of the mqtt.* keys (no paho);
- `outbox.py`: the bounded queue of messages for the broker and the retained state published again on reconnect;
- `messages.py`: bus events as Frigate-style `events` (new/update/end), the health summary;
- `discovery.py`: Home Assistant discovery configs (a device per camera and its entities);
- `commands.py`: the command registry on `P/cmd` with the TCP port's token rule, and Home Assistant's controls;
- `bridge.py`: `MqttBridge`, the component: the paho client, its threads, the wiring to the daemon.

paho-mqtt is imported only when the bridge starts, so a daemon without MQTT never loads it.
"""
