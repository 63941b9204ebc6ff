"""Motion checks on regions of interest."""
from daemon.motion.component import *  # noqa: F401,F403
from daemon.motion.component import SMALL_REGION_PX, Motion, RegionMeter, check_masks, check_regions, format_duration, parse_masks, parse_regions  # noqa: F401
