"""The sun's position, computed locally (no network, no dependency).

This is NOAA's solar position algorithm (the one behind the NOAA Solar
Calculator spreadsheets, after Meeus' "Astronomical Algorithms"): accurate to
well under 0.1 degree for dates between 1800 and 2100, which is far more than
night gating needs. Angles are degrees; latitude is north positive, longitude
east positive; times are Unix timestamps (UTC seconds).

Altitudes are geometric (the centre of the sun, no refraction) unless
`refraction=True`, which is what the usual twilight definitions use: civil
twilight ends at -6, nautical at -12, astronomical at -18 degrees. Sunrise and
sunset are the geometric altitude -0.833 degrees (refraction plus the sun's
radius), the default of `sun_times`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

SUNRISE_ALTITUDE_DEG = -0.833
_DAY_S = 86400.0


class SunPosition(NamedTuple):
    altitude_deg: float  # above the horizon; negative below it
    azimuth_deg: float  # clockwise from north: 90 east, 180 south
    declination_deg: float
    equation_of_time_min: float  # apparent minus mean solar time


def _check_place(lat_deg: float, lon_deg: float, unix_ts: float) -> None:
    if not (math.isfinite(lat_deg) and -90.0 <= lat_deg <= 90.0):
        raise ValueError(f"latitude {lat_deg!r} is not within -90..90 degrees")
    if not (math.isfinite(lon_deg) and -180.0 <= lon_deg <= 180.0):
        raise ValueError(f"longitude {lon_deg!r} is not within -180..180 degrees")
    if not math.isfinite(unix_ts):
        raise ValueError(f"time {unix_ts!r} is not a finite timestamp")


def _declination_and_eot(julian_century: float) -> tuple[float, float]:
    """Solar declination (degrees) and equation of time (minutes) at a Julian century since J2000."""
    t = julian_century
    mean_long = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    mean_anom = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    m = math.radians(mean_anom)
    centre = (
        math.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t)) + math.sin(2 * m) * (0.019993 - 0.000101 * t) + math.sin(3 * m) * 0.000289
    )
    true_long = mean_long + centre
    omega = math.radians(125.04 - 1934.136 * t)
    apparent_long = true_long - 0.00569 - 0.00478 * math.sin(omega)
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(omega))
    declination = math.degrees(math.asin(math.sin(obliquity) * math.sin(math.radians(apparent_long))))
    y = math.tan(obliquity / 2.0) ** 2
    l0 = math.radians(mean_long)
    eot = 4.0 * math.degrees(
        y * math.sin(2 * l0)
        - 2 * ecc * math.sin(m)
        + 4 * ecc * y * math.sin(m) * math.cos(2 * l0)
        - 0.5 * y * y * math.sin(4 * l0)
        - 1.25 * ecc * ecc * math.sin(2 * m)
    )
    return declination, eot


def _refraction_deg(elevation_deg: float) -> float:
    """NOAA's approximation of atmospheric refraction at a geometric elevation."""
    e = elevation_deg
    if e > 85.0:
        return 0.0
    tan_e = math.tan(math.radians(e))
    if e > 5.0:
        arcsec = 58.1 / tan_e - 0.07 / tan_e**3 + 0.000086 / tan_e**5
    elif e > -0.575:
        arcsec = 1735.0 + e * (-518.2 + e * (103.4 + e * (-12.79 + e * 0.711)))
    else:
        arcsec = -20.772 / tan_e
    return arcsec / 3600.0


def sun_position(lat_deg: float, lon_deg: float, unix_ts: float, refraction: bool = False) -> SunPosition:
    """Where the sun is seen from (lat, lon) at `unix_ts`. Raises ValueError for impossible inputs."""
    _check_place(lat_deg, lon_deg, unix_ts)
    julian_day = unix_ts / _DAY_S + 2440587.5
    declination, eot = _declination_and_eot((julian_day - 2451545.0) / 36525.0)
    minutes_utc = (unix_ts % _DAY_S) / 60.0
    true_solar_min = (minutes_utc + eot + 4.0 * lon_deg) % 1440.0
    hour_angle = true_solar_min / 4.0 - 180.0  # 0 at local solar noon, negative in the morning

    lat = math.radians(lat_deg)
    dec = math.radians(declination)
    cos_zenith = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(math.radians(hour_angle))
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))
    altitude = 90.0 - zenith

    denom = math.cos(lat) * math.sin(math.radians(zenith))
    if abs(denom) < 1e-9:
        azimuth = 180.0 if lat_deg >= 0 else 0.0  # sun at the zenith or observer at a pole: no defined bearing
    else:
        cos_az = (math.sin(lat) * math.cos(math.radians(zenith)) - math.sin(dec)) / denom
        a = math.degrees(math.acos(max(-1.0, min(1.0, cos_az))))
        azimuth = (a + 180.0) % 360.0 if hour_angle > 0 else (540.0 - a) % 360.0

    if refraction:
        altitude += _refraction_deg(altitude)
    return SunPosition(altitude, azimuth, declination, eot)


def sun_altitude(lat_deg: float, lon_deg: float, unix_ts: float, refraction: bool = False) -> float:
    """The sun's altitude in degrees above the horizon (negative below it)."""
    return sun_position(lat_deg, lon_deg, unix_ts, refraction).altitude_deg


def _bisect_crossing(lat: float, lon: float, lo: float, hi: float, altitude_deg: float) -> float:
    """The time within [lo, hi] where the altitude crosses `altitude_deg`; the ends must straddle it."""
    f_lo = sun_altitude(lat, lon, lo) - altitude_deg
    while hi - lo > 1.0:
        mid = (lo + hi) / 2.0
        f_mid = sun_altitude(lat, lon, mid) - altitude_deg
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def next_crossing(
    lat_deg: float, lon_deg: float, unix_ts: float, altitude_deg: float, within_s: float = 2 * _DAY_S, step_s: float = 600.0
) -> tuple[float, str] | None:
    """When the sun next crosses `altitude_deg` after `unix_ts`, and whether it is then "rising" or "setting".

    Searches `within_s` seconds ahead in steps of `step_s` (the sun cannot
    cross a level twice in ten minutes) and refines to about a second. None
    when there is no crossing in that time (polar day or night).
    """
    _check_place(lat_deg, lon_deg, unix_ts)
    t0 = unix_ts
    above0 = sun_altitude(lat_deg, lon_deg, t0) > altitude_deg
    end = unix_ts + within_s
    while t0 < end:
        t1 = min(t0 + step_s, end)
        above1 = sun_altitude(lat_deg, lon_deg, t1) > altitude_deg
        if above1 != above0:
            when = _bisect_crossing(lat_deg, lon_deg, t0, t1, altitude_deg)
            return when, ("rising" if above1 else "setting")
        t0, above0 = t1, above1
    return None


def solar_noon(lon_deg: float, unix_ts: float) -> float:
    """The Unix time of the local solar noon on the local solar day that contains `unix_ts`."""
    _check_place(0.0, lon_deg, unix_ts)
    local_mean = unix_ts + lon_deg * 240.0  # 4 minutes of time per degree
    day_start_utc = math.floor(local_mean / _DAY_S) * _DAY_S - lon_deg * 240.0
    noon = day_start_utc + _DAY_S / 2.0
    for _ in range(2):  # the equation of time moves by seconds per day: two rounds settle it
        _, eot = _declination_and_eot(((noon / _DAY_S + 2440587.5) - 2451545.0) / 36525.0)
        noon = day_start_utc + _DAY_S / 2.0 - eot * 60.0
    return noon


def sun_times(lat_deg: float, lon_deg: float, unix_ts: float, altitude_deg: float = SUNRISE_ALTITUDE_DEG) -> dict:
    """Solar noon, and when the sun rises above and sets below `altitude_deg`, on the local solar day of `unix_ts`.

    `rise`/`set` are Unix times, or None when the sun stays above (`polar`:
    "day") or below (`polar`: "night") that altitude all day. Pass -6 for
    civil dawn and dusk, -18 for astronomical.
    """
    _check_place(lat_deg, lon_deg, unix_ts)
    noon = solar_noon(lon_deg, unix_ts)
    before, after = noon - _DAY_S / 2.0, noon + _DAY_S / 2.0
    noon_alt = sun_altitude(lat_deg, lon_deg, noon)
    low_before = sun_altitude(lat_deg, lon_deg, before)
    low_after = sun_altitude(lat_deg, lon_deg, after)
    out: dict = {
        "solar_noon": noon,
        "noon_altitude_deg": noon_alt,
        "midnight_altitude_deg": min(low_before, low_after),
        "altitude_deg": altitude_deg,
        "rise": None,
        "set": None,
        "polar": None,
    }
    if noon_alt <= altitude_deg:
        out["polar"] = "night"
        return out
    # Between solar midnight and noon the altitude only climbs (and only falls after noon), so bisection is safe.
    if low_before < altitude_deg:
        out["rise"] = _bisect_crossing(lat_deg, lon_deg, before, noon, altitude_deg)
    if low_after < altitude_deg:
        out["set"] = _bisect_crossing(lat_deg, lon_deg, noon, after, altitude_deg)
    if out["rise"] is None and out["set"] is None:
        out["polar"] = "day"
    return out
