"""PTZ control over VISCA and preset sweeps: move, settle, picture, count people, report.

    echo "goto 3" | nc pi 9999                  # to preset 3, answered once the camera is there
    echo "sweep 1,2,5" | nc pi 9999             # OK sweep run_20261130_101500 started: 3 preset(s)
    echo "sweep status" | nc pi 9999            # each preset's state, people, ETA

Modules, each one thing: `visca` (messages and reply parsing, no I/O),
`transport` (raw VISCA over TCP, Sony's VISCA over IP over UDP), `client`
(timeouts, retries, matching replies, reconnecting), `presets` (the preset
list and the seed's JSON file; used by the config schema), `pictures`
(settling and taking the picture: the daemon's frames or an HTTP snapshot),
`counting` (the people counter a sweep is given), `report` (the run's files
and retention), `sweep` (the sweeper and its counting worker), `schedule`,
`delivery` (the report by email, a mail API and a webhook), `component`
(`Ptz`) and `commands`.

Importing this package imports nothing else: the schema reads `presets` and
`schedule` without OpenCV or a network library.
"""
