"""Results to the plant over MQTT (`[mqtt]`, docs/mqtt.md): every decision, the station's
status and its stats, published to the plant's broker through a disk spool that keeps what
the broker has not acknowledged. A sink on the journal's seam (plcbridge/sinks.py): side
work that a dead, slow or rude broker, a full disk or a corrupt spool file can slow or stop,
never the PLC's answers.

- messages.py: the topics and payloads, with their JSON Schemas (the one truth docs/mqtt.md
  is generated from); stdlib only;
- spool.py: the SQLite spool (written before publishing, deleted on PUBACK, bounded); stdlib only;
- auth.py: the TLS context and the password, read at each connect, never logged; stdlib only;
- client.py: the connection to the broker (paho-mqtt) on a thread of its own;
- sink.py: the sink that spools each decision, and the status and stats it publishes.

Nothing is imported here: plcbridge.config validates the topic prefix with messages.py, and
must not pull in paho-mqtt (the optional `[mqtt]` extra) to do so. The daemon imports
`plcbridge.mqtt.sink` only when `[mqtt] enabled = true`.
"""
