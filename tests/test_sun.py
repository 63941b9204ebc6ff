"""The sun's position against published figures (NOAA Solar Calculator, almanac sunrise and sunset times)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from daemon.image import sun

GREENWICH = (51.4769, 0.0)
SYDNEY = (-33.8688, 151.2093)
TROMSO = (69.6492, 18.9553)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def minutes_apart(a: float, b: float) -> float:
    return abs(a - b) / 60.0


def test_equator_equinox_noon_is_nearly_overhead():
    # 2024-03-20: equinox at 03:06 UTC; solar noon at 0E comes about 7.5 minutes after 12:00 UTC.
    pos = sun.sun_position(0.0, 0.0, utc("2024-03-20T12:07:30"))
    assert abs(pos.declination_deg) < 0.5
    assert 89.3 < pos.altitude_deg <= 90.0
    assert pos.altitude_deg == pytest.approx(90.0 - abs(pos.declination_deg), abs=0.1)
    assert pos.equation_of_time_min == pytest.approx(-7.5, abs=0.5)


def test_greenwich_midsummer_noon():
    pos = sun.sun_position(*GREENWICH, utc("2024-06-21T12:02:00"))
    assert pos.altitude_deg == pytest.approx(61.96, abs=0.5)
    assert pos.declination_deg == pytest.approx(23.44, abs=0.05)
    assert pos.azimuth_deg == pytest.approx(180.0, abs=1.0)  # due south at noon


def test_greenwich_midwinter_noon():
    pos = sun.sun_position(*GREENWICH, utc("2024-12-21T12:00:00"))
    assert pos.altitude_deg == pytest.approx(15.08, abs=0.5)
    assert pos.declination_deg == pytest.approx(-23.44, abs=0.05)
    assert pos.azimuth_deg == pytest.approx(180.0, abs=1.5)


def test_midnight_is_strongly_negative():
    # Lower culmination: altitude = latitude + declination - 90.
    assert sun.sun_altitude(*GREENWICH, utc("2024-06-21T00:02:00")) == pytest.approx(-15.08, abs=0.5)
    assert sun.sun_altitude(*GREENWICH, utc("2024-12-21T00:00:00")) == pytest.approx(-61.96, abs=0.5)


def test_morning_sun_is_east_and_evening_west():
    morning = sun.sun_position(*GREENWICH, utc("2024-06-21T06:00:00"))
    evening = sun.sun_position(*GREENWICH, utc("2024-06-21T18:00:00"))
    assert 50 < morning.azimuth_deg < 110
    assert 250 < evening.azimuth_deg < 310
    # Symmetric about solar noon (12:02 UTC): nearly the same height four minutes apart either way.
    assert abs(morning.altitude_deg - sun.sun_altitude(*GREENWICH, utc("2024-06-21T18:04:00"))) < 0.3


def test_southern_hemisphere_winter_noon():
    # Sydney, June solstice: noon altitude 90 - 33.87 - 23.44 = 32.69 degrees, sun due north, near 01:57 UTC.
    times = sun.sun_times(*SYDNEY, utc("2024-06-21T02:00:00"))
    assert times["noon_altitude_deg"] == pytest.approx(32.69, abs=0.5)
    assert minutes_apart(times["solar_noon"], utc("2024-06-21T01:57:00")) < 2
    azimuth = sun.sun_position(*SYDNEY, times["solar_noon"]).azimuth_deg
    assert min(azimuth, 360.0 - azimuth) < 1.0  # due north
    # Almanac: sunrise 07:00 AEST (21:00 UTC the day before), sunset 16:53 AEST (06:53 UTC).
    assert minutes_apart(times["rise"], utc("2024-06-20T21:00:00")) < 3
    assert minutes_apart(times["set"], utc("2024-06-21T06:53:00")) < 3


def test_greenwich_sunrise_and_sunset_on_the_solstice():
    # Almanac for London/Greenwich on 2024-06-21: sunrise 04:43 BST, sunset 21:21 BST.
    times = sun.sun_times(*GREENWICH, utc("2024-06-21T09:00:00"))
    assert times["polar"] is None
    assert minutes_apart(times["rise"], utc("2024-06-21T03:43:00")) < 3
    assert minutes_apart(times["set"], utc("2024-06-21T20:21:00")) < 3
    assert minutes_apart(times["solar_noon"], utc("2024-06-21T12:02:00")) < 2
    assert times["midnight_altitude_deg"] == pytest.approx(-15.08, abs=0.5)


def test_refraction_lifts_the_sun_near_the_horizon_only():
    at_set = sun.sun_times(*GREENWICH, utc("2024-06-21T09:00:00"), altitude_deg=0.0)["set"]
    geometric = sun.sun_altitude(*GREENWICH, at_set)
    apparent = sun.sun_altitude(*GREENWICH, at_set, refraction=True)
    assert geometric == pytest.approx(0.0, abs=0.01)
    assert apparent - geometric == pytest.approx(0.48, abs=0.1)  # about half a degree at the horizon
    high = utc("2024-06-21T12:02:00")
    assert sun.sun_altitude(*GREENWICH, high, refraction=True) - sun.sun_altitude(*GREENWICH, high) < 0.02


def test_next_crossing_civil_dusk_and_dawn():
    # Civil dusk at Greenwich on the solstice is about 22:08 BST (21:08 UTC); dawn about 03:57 BST next day.
    dusk = sun.next_crossing(*GREENWICH, utc("2024-06-21T12:00:00"), -6.0)
    assert dusk is not None
    when, direction = dusk
    assert direction == "setting"
    assert minutes_apart(when, utc("2024-06-21T21:08:00")) < 4
    assert sun.sun_altitude(*GREENWICH, when) == pytest.approx(-6.0, abs=0.01)
    dawn = sun.next_crossing(*GREENWICH, when + 60, -6.0)
    assert dawn is not None and dawn[1] == "rising"
    assert minutes_apart(dawn[0], utc("2024-06-22T02:57:00")) < 5


def test_polar_day_and_night():
    summer = sun.sun_times(*TROMSO, utc("2024-06-21T10:00:00"))
    assert summer["polar"] == "day" and summer["rise"] is None and summer["set"] is None
    assert summer["midnight_altitude_deg"] > 0
    assert sun.next_crossing(*TROMSO, utc("2024-06-21T10:00:00"), -0.833, within_s=86400) is None
    winter = sun.sun_times(*TROMSO, utc("2024-12-21T10:00:00"))
    assert winter["polar"] == "night" and winter["rise"] is None
    assert winter["noon_altitude_deg"] < 0
    assert sun.sun_altitude(*TROMSO, utc("2024-12-21T11:00:00")) < 0


def test_the_poles_and_the_date_line_work():
    # At the north pole the altitude is the declination all day long.
    north = [sun.sun_position(90.0, 0.0, utc(f"2024-06-21T{h:02d}:00:00")) for h in (0, 6, 12, 18)]
    for pos in north:
        assert pos.altitude_deg == pytest.approx(pos.declination_deg, abs=0.05)
    assert sun.sun_altitude(-90.0, 0.0, utc("2024-06-21T12:00:00")) == pytest.approx(-23.44, abs=0.1)
    east = sun.sun_altitude(0.0, 180.0, utc("2024-03-20T00:07:00"))
    west = sun.sun_altitude(0.0, -180.0, utc("2024-03-20T00:07:00"))
    assert east == pytest.approx(west, abs=1e-6)
    assert east > 89.0


@pytest.mark.parametrize(
    "lat, lon, ts",
    [
        (91.0, 0.0, 1.7e9),
        (-90.5, 0.0, 1.7e9),
        (0.0, 180.5, 1.7e9),
        (math.nan, 0.0, 1.7e9),
        (0.0, math.inf, 1.7e9),
        (0.0, 0.0, math.nan),
    ],
)
def test_impossible_places_and_times_are_refused(lat, lon, ts):
    with pytest.raises(ValueError):
        sun.sun_altitude(lat, lon, ts)
    with pytest.raises(ValueError):
        sun.next_crossing(lat, lon, ts, -6.0)
    with pytest.raises(ValueError):
        sun.sun_times(lat, lon, ts)
