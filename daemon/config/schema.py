"""The one config schema: every key, declared once with its type, default, range or choices, a line of doc, whether it
applies live and whether it is a secret. Loading, `get`/`set`, `dump_config`, `overwrite_config` and the README's config
table all read this table.
"""

from __future__ import annotations

from daemon.config.checks import (
    check_bind,
    check_camera_name,
    check_detect_classes,
    check_detect_zone,
    check_downscale,
    check_formats,
    check_http_url,
    check_networks,
    check_roots,
    check_token,
    host_name,
)
from daemon.config.keys import Key

# The one validation of regions and masks (without the frame size: Motion checks the bounds against the real frame).
from daemon.motion.regions import check_masks, check_regions
from daemon.mqtt.topics import check_host as mqtt_check_host
from daemon.mqtt.topics import check_topic_level
from daemon.net.httpauth import check_tokens, check_users
from daemon.ptz.presets import check_presets
from daemon.ptz.schedule import check_every, check_times

#: The default of control.allow: loopback, the private IPv4 and IPv6 ranges and link-local addresses.
PRIVATE_NETS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"]

# --- the schema ------------------------------------------------------------------------------------

SCHEMA: tuple[Key, ...] = (
    # camera
    Key(
        "camera.name",
        str,
        host_name(),
        "Name of this camera in alerts, MQTT topics and the fleet view",
        live=False,
        check=check_camera_name,
        shown_default="the host name",
    ),
    Key(
        "camera.source",
        str,
        "auto",
        "Frame source: auto (Pi camera, else /dev/video0, else synthetic), picamera2, opencv or synthetic",
        choices=("auto", "picamera2", "opencv", "synthetic"),
        live=False,
    ),
    Key(
        "camera.device",
        str,
        "/dev/video0",
        "For the opencv source: a USB camera index, a V4L2 path, an RTSP/HTTP URL or a video file",
        live=False,
    ),
    Key(
        "camera.loop_video", bool, True, "For a video file: start again at the end instead of reporting the source as finished", live=False
    ),
    Key("camera.width", int, 1024, "Capture width in pixels (full resolution, used by save)", min=64, max=8192, live=False),
    Key("camera.height", int, 768, "Capture height in pixels", min=48, max=8192, live=False),
    Key(
        "camera.framerate",
        float,
        10.0,
        "Frames per second by day (the source is asked for it; the loop never runs faster)",
        min=0.05,
        max=120,
    ),
    Key("camera.hflip", bool, False, "Mirror the image horizontally", live=False),
    Key("camera.vflip", bool, False, "Flip the image vertically", live=False),
    Key(
        "camera.stall_timeout_s",
        float,
        5.0,
        "A source that gives no frame for this long (beyond the frame interval) is reopened",
        min=0.5,
        max=600,
    ),
    Key("camera.reopen_backoff_max_s", float, 30.0, "Longest wait between attempts to reopen a failed source", min=0.5, max=3600),
    Key(
        "camera.lores",
        str,
        "auto",
        "Pi camera: the ISP makes the ring-size frame as a second (lores) stream, so the CPU does not resize; off: resize on the CPU",
        choices=("auto", "off"),
        live=False,
    ),
    Key(
        "camera.hw_encoder",
        str,
        "auto",
        "Pi camera: the stream's JPEGs come from the Pi's hardware MJPEG encoder (Pi 4 and older) "
        "while nothing is drawn on them and mjpeg.resolution is full; off: encode on the CPU",
        choices=("auto", "off"),
    ),
    # synthetic scene
    Key("synthetic.seed", int, 1, "Random seed of the synthetic scene (same seed, same frames)", min=0, live=False),
    Key(
        "synthetic.day_length_s",
        float,
        600.0,
        "Length of one synthetic day/night cycle in seconds (86400 = real time)",
        min=10,
        max=86400 * 7,
    ),
    Key(
        "synthetic.start_phase", float, 0.3, "Where in the cycle the scene starts: 0 midnight, 0.25 dawn, 0.5 noon, 0.75 dusk", min=0, max=1
    ),
    Key("synthetic.people", int, 2, "Number of walking person-like figures", min=0, max=20),
    Key("synthetic.machine", bool, True, "Draw a machine part that runs and stops on a schedule", live=False),
    Key("synthetic.noise", float, 4.0, "Sensor noise standard deviation in grey levels (grows with gain at night)", min=0, max=64),
    # ring buffer
    Key("ring.size", int, 300, "Frames kept in the ring (clamped to the RAM budget)", min=2, max=100000, live=False),
    Key(
        "ring.downscale",
        str,
        "256x192",
        "Size of ring frames: WIDTHxHEIGHT, or a factor (4 = a quarter of the width and height, 1 = full)",
        live=False,
        check=check_downscale,
    ),
    Key("ring.max_ram_fraction", float, 0.25, "At most this fraction of available memory goes to the ring", min=0.01, max=0.9, live=False),
    # night mode
    Key("night.enabled", bool, True, "Switch to night exposure when the scene stays dark"),
    Key("night.dark_threshold", float, 40.0, "Enter night when the day-equivalent brightness (0-255) stays below this", min=0, max=255),
    Key(
        "night.bright_threshold",
        float,
        60.0,
        "Leave night when the day-equivalent brightness stays above this (must be above dark_threshold)",
        min=0,
        max=255,
    ),
    Key("night.min_dark_frames", int, 10, "Consecutive dark frames needed to enter night", min=1, max=100000),
    Key("night.min_bright_frames", int, 10, "Consecutive bright frames needed to leave night", min=1, max=100000),
    Key("night.min_dwell_s", float, 60.0, "After a switch, no switch back for this long (exposure settles, no flapping)", min=0, max=86400),
    Key(
        "night.mode",
        str,
        "still",
        "Night camera mode: still (long exposure, AE/AWB off) or slow_video (low frame rate, long frame durations)",
        choices=("still", "slow_video"),
    ),
    Key(
        "night.exposure_us",
        int,
        1_000_000,
        "Night exposure time in microseconds (clamped to what the sensor allows)",
        min=100,
        max=700_000_000,
    ),
    Key("night.gain", float, 8.0, "Night analogue gain", min=1.0, max=64.0),
    Key("night.sun.enabled", bool, False, "Gate the brightness rule with the sun's altitude (no night at noon, no day at midnight)"),
    Key("night.sun.latitude", float, 0.0, "Latitude in degrees, north positive", min=-90, max=90),
    Key("night.sun.longitude", float, 0.0, "Longitude in degrees, east positive", min=-180, max=180),
    Key(
        "night.sun.altitude_deg",
        float,
        -6.0,
        "Sun altitude that separates day and night (-6 civil, -12 nautical, -18 astronomical twilight)",
        min=-30,
        max=30,
    ),
    Key("night.sun.margin_deg", float, 6.0, "Brightness decides freely within this many degrees of altitude_deg", min=0, max=45),
    # export and auto-save
    Key(
        "export.base_dir",
        str,
        "captures",
        "Folder for saved images (captures/YYYY-MM-DD/...); relative to the working directory; inside storage.allowed_roots",
        path="dir",
    ),
    Key("export.formats", list, ["jpg"], "Formats written by save/pastStack when none is given: jpg, png, npy", check=check_formats),
    Key("export.jpeg_quality", int, 92, "JPEG quality of saved images", min=10, max=100),
    Key("export.sidecar", bool, True, "Write a .json sidecar with the frame metadata next to every image"),
    Key("export.save_before_s", float, 10.0, "pastStack stacks the frames of the last this many seconds", min=0.1, max=86400),
    Key("export.stack_count", int, 16, "Most frames in one stack", min=1, max=1000),
    Key(
        "export.stack_method",
        str,
        "mean",
        "Stacking: mean, or sigma_clip (rejects hot pixels, planes, satellites)",
        choices=("mean", "sigma_clip"),
    ),
    Key("export.stack_sigma", float, 3.0, "Rejection threshold of sigma_clip, in standard deviations", min=0.5, max=10),
    Key(
        "export.auto_save_interval_s",
        float,
        3600.0,
        "Auto-save period, aligned to the wall clock (3600 = on the hour); 0 turns it off",
        min=0,
        max=86400 * 7,
    ),
    Key("export.auto_save_format", str, "jpg", "Format of auto-saved images", choices=("jpg", "png", "npy")),
    Key(
        "export.night_auto_save",
        str,
        "stack",
        "At night auto-save a stack of stack_count full frames, or one (long-exposure) frame",
        choices=("stack", "frame"),
    ),
    Key(
        "export.max_disk_mb",
        float,
        2048.0,
        "Keep the captures folder under this size, deleting the oldest auto-saves first",
        min=1,
        max=10_000_000,
    ),
    Key(
        "export.min_free_mb", float, 200.0, "Keep at least this much disk free, deleting the oldest auto-saves first", min=0, max=10_000_000
    ),
    Key(
        "export.stack_memory_mb",
        float,
        64.0,
        "Memory all stacks in progress may hold together (sigma_clip holds its N frames, a mean stack a float sum); "
        "beyond it a stack is refused with ERR busy or ERR too large, and a sigma_clip too large for it is stacked with "
        "mean. 64 fits a Pi Zero: 16 frames of 1024x768 by sigma_clip, or 5 mean stacks",
        min=1,
        max=1_000_000,
    ),
    # where files may be
    Key(
        "storage.allowed_roots",
        list,
        [],
        "Folders under which every folder the daemon writes (export.base_dir, motion.log_dir) and every file it reads (a model, labels, "
        "a CA file) must lie; [] means the config file's folder, the working directory, /var/lib/picamd, /var/log/picamd and /etc/picamd. "
        "Set in the config file only, never on the command port",
        live=False,
        file_only=True,
        check=check_roots,
    ),
    # command port
    Key(
        "control.bind",
        str,
        "0.0.0.0",
        "Address the command port listens on (an IP address of this machine, or a name that resolves to one)",
        live=False,
        check=check_bind,
    ),
    Key("control.port", int, 9999, "TCP command port (netcat)", min=0, max=65535, live=False),
    Key(
        "control.allow",
        list,
        PRIVATE_NETS,
        "Client networks allowed to connect to the command port and the HTTP server",
        check=check_networks,
    ),
    Key(
        "control.token",
        str,
        "",
        "If set, commands that change state need `token SECRET` first on the connection (one word, no spaces)",
        secret=True,
        check=check_token,
    ),
    Key("control.max_clients", int, 32, "Most command connections at once", min=1, max=1024),
    Key(
        "control.grace_s",
        float,
        5.0,
        "When the port is full, the connection idle longest (first one that never sent a command) is "
        "dropped to make room for a newcomer; a new connection is safe from that for this long",
        min=0.1,
        max=3600,
    ),
    Key("control.idle_timeout_s", float, 300.0, "Close a command connection idle for this long", min=1, max=86400),
    Key("control.max_line_bytes", int, 4096, "Longest command line accepted", min=64, max=1_048_576),
    Key(
        "control.script_linger_s",
        float,
        1.0,
        "A client whose first command arrives at once after connecting (echo CMD | nc, "
        "which never closes its side) is disconnected once it has been answered and stays silent this long; 0 keeps every "
        "connection until idle_timeout_s",
        min=0,
        max=3600,
    ),
    # HTTP server
    Key(
        "http.bind",
        str,
        "0.0.0.0",
        "Address the HTTP server listens on (an IP address of this machine, or a name that resolves to one)",
        live=False,
        check=check_bind,
    ),
    Key("http.port", int, 8080, "HTTP port for /stream, /snapshot.jpg, /meta, /health and the page", min=0, max=65535, live=False),
    Key(
        "http.max_clients",
        int,
        16,
        "Most /stream viewers at once (the page, /health and the other short requests have http.max_requests)",
        min=1,
        max=1024,
    ),
    Key(
        "http.max_requests",
        int,
        8,
        "Most short requests (the page, /health, /metrics, /snapshot.jpg, /meta...) answered at once, apart from the viewers",
        min=1,
        max=256,
    ),
    Key(
        "http.max_pending",
        int,
        64,
        "Most connections whose request is still being read (slow, silent or idle kept-alive ones); "
        "a newcomer beyond it replaces the one that has waited longest",
        min=4,
        max=4096,
    ),
    Key(
        "http.header_timeout_s",
        float,
        5.0,
        "A client must send its whole request line and headers within this many seconds of "
        "connecting (or of starting its next request on a kept-alive connection)",
        min=0.5,
        max=120,
    ),
    Key(
        "http.keepalive_s",
        float,
        5.0,
        "A kept-alive connection that sends no new request for this long is closed; 0 closes every connection after its answer",
        min=0,
        max=300,
    ),
    Key(
        "http.users",
        dict,
        {},
        "HTTP Basic login, user: password hash from `picamd hash-password`; when users or tokens are set, every request needs one",
        secret=True,
        check=check_users,
    ),
    Key(
        "http.tokens",
        list,
        [],
        "Bearer tokens for programs (Authorization: Bearer TOKEN), 16+ characters each",
        secret=True,
        check=check_tokens,
    ),
    Key("http.health_open", bool, True, "/health answers without login even when users or tokens are set (for monitoring)"),
    # MJPEG stream
    Key("mjpeg.quality", int, 80, "JPEG quality of the stream", min=10, max=100),
    Key("mjpeg.max_fps", float, 15.0, "Highest frame rate sent to one viewer (a viewer may ask for less with ?fps=)", min=0.1, max=120),
    Key("mjpeg.resolution", str, "full", "Stream the full camera frame or the downscaled ring frame", choices=("full", "ring")),
    # health
    Key(
        "health.swap_guard_mb",
        float,
        64.0,
        "When swap in use exceeds this, the capture slows down to let memory recover",
        min=0,
        max=1_000_000,
    ),
    Key("health.swap_guard_factor", float, 2.0, "How much slower the capture runs while the swap guard is on", min=1, max=100),
    # motion (regions of interest, machine state)
    Key("motion.enabled", bool, True, "Measure motion in the regions on every ring frame"),
    Key(
        "motion.method",
        str,
        "background",
        "Compare against a running background (slow light changes fade in) or the previous frame",
        choices=("background", "previous"),
    ),
    Key("motion.background_alpha", float, 0.05, "Weight of each new frame in the running background", min=0.001, max=1),
    Key("motion.blur", int, 5, "Gaussian blur kernel (odd pixels, 0 = none) before differencing", min=0, max=51),
    Key("motion.pixel_threshold", int, 25, "Grey-level difference that counts a pixel as changed", min=1, max=255),
    Key("motion.dilate", int, 2, "Dilation iterations on the changed-pixel mask", min=0, max=20),
    Key("motion.window_s", float, 30.0, "RUNNING/STOPPED is the majority over this many seconds", min=1, max=3600),
    Key("motion.running_fraction", float, 0.5, "More than this fraction of moving frames in the window means RUNNING", min=0.01, max=0.99),
    Key("motion.deep_sleep_s", float, 1200.0, "STOPPED for this long becomes DEEP_SLEEP", min=1, max=86400 * 30),
    Key(
        "motion.brightness_jump",
        float,
        20.0,
        "A global brightness change of this many grey levels between frames resets the background instead of counting as motion",
        min=1,
        max=255,
    ),
    Key("motion.settle_s", float, 5.0, "After a brightness jump or night switch, motion is not judged for this long", min=0, max=600),
    Key(
        "motion.regions",
        list,
        [],
        "Regions: name, rect [x,y,w,h] or polygon [[x,y],...] (pixels of the full frame, or fractions "
        "0..1), min_fraction or min_pixels, optional machine_id and webhook; at most 64, a polygon at most 256 points",
        check=check_regions,
    ),
    Key(
        "motion.masks",
        list,
        [],
        "Areas ignored everywhere (burnt-in timestamps, trees): rects or polygons like the regions (at most 64); "
        "a PTZ preset's masks add to them",
        check=check_masks,
    ),
    Key(
        "motion.log_dir",
        str,
        "logs",
        "Folder of the motion, state-change and deep-sleep logs; inside storage.allowed_roots",
        live=False,
        path="dir",
    ),
    Key(
        "motion.log_interval_s",
        float,
        60.0,
        "Each region's motion is summed up per interval of this many seconds of the wall clock, one line in summary_<region>.jsonl "
        "(frames, moving frames, mean and max changed fraction, state at the end)",
        min=1,
        max=3600,
    ),
    Key(
        "motion.log_max_mb",
        float,
        2.0,
        "Rotate a summary, state-change or deep-sleep log at this size. A summary line is ~170 bytes, ~245 KB a day per region at "
        "log_interval_s 60: 2 MB x log_keep 5 keep at least 40 days in at most 12 MB per region",
        min=0.01,
        max=10000,
    ),
    Key("motion.log_keep", int, 5, "Rotated files kept of each summary, state-change and deep-sleep log", min=0, max=1000),
    Key(
        "motion.log_frames",
        bool,
        False,
        "Also log every frame of every region in motion_<region>.jsonl: ~120 bytes a line, ~100 MB a day per region at 10 fps "
        "(for a close look at a day, or calibration)",
    ),
    Key("motion.log_frames_max_mb", float, 10.0, "Rotate a per-frame log (log_frames) at this size", min=0.01, max=10000),
    Key(
        "motion.log_frames_keep",
        int,
        10,
        "Rotated per-frame logs kept per region: 10 MB x 10 keep about the last day of one region at 10 fps",
        min=0,
        max=1000,
    ),
    # notifications
    Key("notify.queue_size", int, 100, "Pending notifications kept; when full the oldest is dropped and counted", min=1, max=100000),
    Key("notify.timeout_s", float, 5.0, "Timeout of one send attempt", min=0.1, max=300),
    Key("notify.retries", int, 3, "Attempts after the first before a notification is given up", min=0, max=20),
    Key("notify.backoff_s", float, 2.0, "First wait between attempts; doubles each time", min=0, max=3600),
    Key("notify.events", list, ["motion.state", "motion.deep_sleep", "night"], "Event kinds (prefixes) that are sent"),
    Key("notify.webhook.url", str, "", "Webhook URL (http:// or https://); empty turns webhooks off", check=check_http_url),
    Key("notify.webhook.format", str, "json", "Body format: json (the whole event) or ifttt (value1..value3)", choices=("json", "ifttt")),
    Key("notify.webhook.headers", dict, {}, "Extra HTTP headers of webhook requests"),
    Key("notify.webhook.token", str, "", "Sent as 'Authorization: Bearer TOKEN' when set", secret=True),
    Key("notify.email.smtp_host", str, "", "SMTP server; empty turns email off"),
    Key("notify.email.smtp_port", int, 587, "SMTP port", min=1, max=65535),
    Key("notify.email.security", str, "starttls", "none, starttls or ssl", choices=("none", "starttls", "ssl")),
    Key("notify.email.sender", str, "picamd@localhost", "From address"),
    Key("notify.email.recipients", list, [], "To addresses"),
    Key("notify.email.username", str, "", "SMTP user; the password comes from the environment variable PICAMD_SMTP_PASSWORD"),
    Key(
        "notify.email.ca_file",
        str,
        "",
        "PEM file of certificates to trust for the SMTP server's TLS (a local relay with its own certificate); empty: the system's",
        path="file",
    ),
    # alerts: each new person (detect.person) with its annotated picture, the way seed 003's backend takes them
    Key(
        "notify.queue_max_mb",
        float,
        16.0,
        "Alert pictures all outboxes may hold together; beyond it the oldest waiting one is dropped and counted",
        min=0.1,
        max=1024,
    ),
    Key(
        "notify.alerts.url",
        str,
        "",
        "Alert endpoint: a JSON POST per new person (detect.person, whatever notify.events selects) with camera_id, alert_type, "
        "confidence, the annotated JPEG in image_base64, description, boxes, count, groups, track_id; empty turns alerts off",
        check=check_http_url,
    ),
    Key("notify.alerts.token", str, "", "Sent as 'Authorization: Token TOKEN' (Django REST framework's token login)", secret=True),
    Key("notify.alerts.camera_id", str, "", "The alerts' camera_id (digits go as a number); empty: camera.name"),
    Key("notify.alerts.cooldown_s", float, 60.0, "Least time between two alerts of the same track", min=0, max=86400),
    # detection (on-device, off by default)
    Key(
        "detect.enabled",
        bool,
        False,
        "Run the person detector on the newest full-resolution frame: true here (or `set detect.enabled true` live) turns it on "
        "with the built-in model; it costs memory and CPU, see the README's Pi memory table",
    ),
    Key(
        "detect.backend",
        str,
        "tflite",
        "Detector backend (tflite: LiteRT, else tflite-runtime); a change reloads the detector",
        choices=("tflite",),
    ),
    Key(
        "detect.model",
        str,
        "",
        path="file",
        doc="Model file (.tflite: YOLOv8/YOLO11, YOLOv5, or SSD with post-process); empty: the built-in SSD MobileNet; "
        "a change reloads the detector",
    ),
    Key(
        "detect.labels",
        str,
        "",
        path="file",
        doc="Label file, one name per line; empty: the file beside the model (same name .txt, or labels.txt), "
        "else the model's own names (the built-in SSD's with the built-in model)",
    ),
    Key("detect.classes", list, ["person"], "Class names (or ids) to keep; [] keeps every class", check=check_detect_classes),
    Key("detect.score_threshold", float, 0.5, "Lowest score of a detection", min=0.01, max=1),
    Key("detect.iou_threshold", float, 0.45, "Overlap above which NMS drops the weaker of two boxes", min=0.01, max=1),
    Key("detect.threads", int, 2, "Interpreter threads; a change reloads the detector", min=1, max=4),
    Key("detect.max_fps", float, 2.0, "Most inferences per second (the worker takes the newest frame, never a backlog)", min=0.05, max=30),
    Key(
        "detect.gate",
        str,
        "motion",
        "When to run: motion (detect.zone or the whole ring frame changed since the last inference), "
        "regions (a named motion region is moving) or always",
        choices=("motion", "regions", "always"),
    ),
    Key(
        "detect.gate_threshold",
        float,
        0.002,
        "Fraction of the ring frame (or zone) that must have changed since the last inference to open the motion gate",
        min=0,
        max=1,
    ),
    Key(
        "detect.zone",
        list,
        [],
        "[] or [x, y, w, h] of the full frame (pixels, or fractions 0..1) cropped before the model; the motion gate looks there too",
        check=check_detect_zone,
    ),
    Key("detect.draw_boxes", bool, False, "Draw the boxes on the stream's JPEGs (never on the ring or saved raw frames)"),
    Key("detect.events_keep", int, 100, "Recent detection events kept for 'detect events'", min=1, max=10000),
    Key("detect.dwell_s", float, 1.0, "A person is an event (detect.person) once tracked this long", min=0, max=3600),
    Key("detect.clear_s", float, 10.0, "detect.clear after no one has been tracked for this long", min=0, max=86400),
    Key(
        "detect.groups",
        bool,
        True,
        "Group people with DBSCAN over their foot points (loads scikit-learn, about 100 MiB, the first time two people are seen)",
    ),
    Key("detect.group_eps", float, 1.0, "Two people within this many body heights of each other are neighbours", min=0.05, max=20),
    Key("detect.group_min_samples", int, 2, "Fewest people in a group", min=2, max=100),
    Key(
        "detect.evidence",
        bool,
        True,
        "On detect.person save the annotated full-resolution JPEG (kind autodetect) and a clip of the ring (kind clip) into the captures",
    ),
    Key(
        "detect.clip_pre_s",
        float,
        5.0,
        "A detect.person clip starts this long before the person's frame (as far back as the ring holds)",
        min=0,
        max=600,
    ),
    Key(
        "detect.clip_post_s",
        float,
        5.0,
        "A detect.person clip ends this long after the person's frame (it is written once those frames are in)",
        min=0,
        max=600,
    ),
    # PTZ: a camera moved over VISCA, preset sweeps (daemon/ptz)
    Key("ptz.enabled", bool, False, "Control a PTZ camera over VISCA at ptz.host (goto, sweep, ... on the command port)"),
    Key(
        "ptz.protocol",
        str,
        "visca-tcp",
        "visca-tcp: raw VISCA over TCP (PTZOptics-style cameras, serial bridges); visca-udp: Sony's VISCA over IP",
        choices=("visca-tcp", "visca-udp"),
    ),
    Key("ptz.host", str, "", "The PTZ camera's address or name"),
    Key("ptz.port", int, 0, "VISCA port; 0: the protocol's default (5678 TCP, 52381 UDP)", min=0, max=65535),
    Key(
        "ptz.camera_address",
        int,
        1,
        "VISCA address of the camera, for cameras chained behind one serial bridge (over IP it is always 1)",
        min=1,
        max=7,
    ),
    Key(
        "ptz.timeout_s",
        float,
        2.0,
        "Longest wait for the camera's first answer (ACK, inquiry) before the request is sent again",
        min=0.05,
        max=60,
    ),
    Key(
        "ptz.move_timeout_s",
        float,
        30.0,
        "Longest wait for a movement's completion; past it the move fails, naming the command and the camera",
        min=0.5,
        max=600,
    ),
    Key(
        "ptz.retries", int, 2, "Sends after the first when the camera does not answer (and snapshot fetches after the first)", min=0, max=10
    ),
    Key(
        "ptz.presets",
        list,
        [],
        "Presets: {number 0..254, name, settle_s (longest wait for the picture to settle), zone [x, y, w, h] where people are counted, "
        "regions (this view's own motion regions, as motion.regions) and masks (added to motion.masks here)}",
        check=check_presets,
    ),
    Key(
        "ptz.presets_file",
        str,
        "",
        'JSON preset file like {"presets": [{"number": 1, "name": "Entrance"}]}; ptz.presets win over it',
        path="file",
    ),
    Key(
        "ptz.settle_s",
        float,
        5.0,
        "Longest wait for the picture to settle after the camera arrives (a preset's settle_s wins)",
        min=0,
        max=600,
    ),
    Key(
        "ptz.settle_threshold",
        float,
        0.005,
        "The picture has settled when less than this fraction of it changes from one frame to the next (the motion measure)",
        min=0,
        max=1,
    ),
    Key(
        "ptz.snapshot_url",
        str,
        "",
        "Take each picture from this HTTP snapshot (http://user:password@camera/snapshot.jpg) instead of the daemon's own frames",
        check=check_http_url,
    ),
    Key("ptz.snapshot_auth", str, "basic", "Login of the snapshot URL's user", choices=("basic", "digest")),
    Key("ptz.snapshot_timeout_s", float, 5.0, "Timeout of one snapshot fetch", min=0.1, max=120),
    Key(
        "ptz.sweep_every_min",
        float,
        0.0,
        "Sweep every this many minutes, aligned to local midnight; 0: not",
        min=0,
        max=1440,
        check=check_every,
    ),
    Key("ptz.sweep_at", list, [], "Sweep at these local times (HH:MM)", check=check_times),
    Key("ptz.keep_runs", int, 50, "Sweep runs kept in <export.base_dir>/sweeps, the oldest deleted first", min=1, max=100000),
    Key("ptz.max_disk_mb", float, 1024.0, "Keep the sweep runs under this size, the oldest deleted first", min=1, max=10_000_000),
    Key("ptz.report.email", bool, False, "Mail each sweep's report with its zip attached, through the notify.email SMTP server"),
    Key("ptz.report.email_to", list, [], "Recipients of the report (mail and mail API); empty: notify.email.recipients"),
    Key(
        "ptz.report.mail_api_url",
        str,
        "",
        "HTTP mail API for the report (JSON POST, the zip in base64, a bearer token); empty: off",
        check=check_http_url,
    ),
    Key(
        "ptz.report.mail_api_token",
        str,
        "",
        "The mail API's bearer token (else the environment variable PICAMD_MAIL_API_TOKEN)",
        secret=True,
    ),
    Key("ptz.report.webhook", str, "", "Webhook that gets each sweep's summary and CSV rows as JSON; empty: off", check=check_http_url),
    Key("ptz.report.attach_max_mb", float, 20.0, "A larger zip is not attached (the report says where it is)", min=0.1, max=1000),
    # MQTT
    Key("mqtt.host", str, "", "MQTT broker (host name or IP address, no port); empty turns MQTT off", live=False, check=mqtt_check_host),
    Key("mqtt.port", int, 1883, "MQTT broker port (1883; 8883 is the usual one with TLS)", min=1, max=65535, live=False),
    Key(
        "mqtt.topic_prefix",
        str,
        "picamd",
        "First topic level: everything is under PREFIX/<camera.name>/",
        live=False,
        check=check_topic_level,
    ),
    Key("mqtt.username", str, "", "Broker user; the password comes from the environment variable PICAMD_MQTT_PASSWORD", live=False),
    Key("mqtt.tls", bool, False, "Connect with TLS, trusting the system's certificate authorities (or mqtt.ca_file)", live=False),
    Key(
        "mqtt.ca_file",
        str,
        "",
        "PEM file of the certificate authorities to trust for the broker's TLS (turns TLS on); "
        "empty: the system's; inside storage.allowed_roots",
        live=False,
        path="file",
    ),
    Key(
        "mqtt.keepalive_s",
        int,
        30,
        "Keep-alive: the broker publishes the last will (offline) after 1.5 times this without a word",
        min=5,
        max=3600,
        live=False,
    ),
    Key(
        "mqtt.queue_size",
        int,
        1000,
        "Messages held while the broker is away; when full the oldest is dropped and counted "
        "(retained states are kept apart and sent again on reconnect)",
        min=10,
        max=100000,
    ),
    Key("mqtt.health_every_s", float, 30.0, "Publish the health summary (PREFIX/<camera>/health) this often", min=1, max=86400),
    Key(
        "mqtt.snapshot_every_s",
        float,
        10.0,
        "Publish a JPEG of the newest frame (the Home Assistant camera) at most this often; 0 turns it off",
        min=0,
        max=86400,
    ),
    Key("mqtt.discovery", bool, True, "Publish Home Assistant MQTT discovery: a device with its entities, no YAML needed", live=False),
    Key(
        "mqtt.discovery_prefix",
        str,
        "homeassistant",
        "Home Assistant's discovery prefix (it announces itself on PREFIX/status)",
        live=False,
        check=check_topic_level,
    ),
    Key(
        "mqtt.allow_controls",
        bool,
        False,
        "With control.token set, let the Home Assistant controls (night/set, motion/set, "
        "detect/set) work without the token, which they cannot send (the broker's ACL then decides who may); "
        "without a token they are always open",
    ),
    # logging
    Key("logging.level", str, "INFO", "Log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}

#: Keys that moved: a config file with the old name still loads (with one log line); `set` and `get` name the new one.
RENAMED: dict[str, str] = {
    "mjpeg.bind": "http.bind",
    "mjpeg.port": "http.port",
    "mjpeg.max_clients": "http.max_clients",
}
