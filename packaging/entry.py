"""Entry point of the frozen `whatsdex` executable (built by packaging/pyinstaller.spec).

It prepares what only the frozen program needs, then runs the ordinary CLI. One extra,
undocumented command, `whatsdex bundle-check`, exercises the bundled pieces that no CLI command
touches (libmagic and its database, phone number metadata, APScheduler's plugins, the web
files), for build.sh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Where the spec puts libmagic's compiled database inside the bundle.
MAGIC_DATABASE = Path("libmagic") / "magic.mgc"
BUNDLE_CHECK = "bundle-check"


def bundle_dir() -> Path | None:
    """The directory the bootloader unpacked the program into (None when not frozen)."""
    meipass = getattr(sys, "_MEIPASS", None)
    return Path(meipass) if meipass else None


def use_bundled_magic_database() -> None:
    """Point libmagic at the database shipped with it, before neonize imports python-magic.

    The bundled libmagic looks for its database where the build machine kept it, which the
    target machine may lack or hold in another format version. Always overriding also replaces
    a MAGIC inherited from a parent WhatsDeX process, which named that parent's bundle dir.
    """
    bundle = bundle_dir()
    if bundle is not None:
        os.environ["MAGIC"] = str(bundle / MAGIC_DATABASE)


def bundle_check() -> list[str]:
    """Problems with the bundled pieces no CLI command exercises; empty when all is well."""
    problems: list[str] = []
    bundle = bundle_dir()
    if bundle is None:
        return ["not running from the frozen executable"]

    import whatsdex.app

    for sub in ("templates", "static"):
        if not any((whatsdex.app.WEB_DIR / sub).rglob("*.*")):
            problems.append(f"no files in {whatsdex.app.WEB_DIR / sub}")

    try:
        import magic

        png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17)
        mime = magic.from_buffer(png, mime=True)
        if mime != "image/png":
            problems.append(f"libmagic saw a PNG as {mime!r}")
        maps = Path("/proc/self/maps").read_text()
        loaded = {line.split()[-1] for line in maps.splitlines() if "libmagic" in line}
        if not loaded or not all(path.startswith(str(bundle)) for path in loaded):
            problems.append(f"libmagic was not loaded from the bundle: {sorted(loaded)}")
    except Exception as exc:  # any failure here is a packaging defect to report
        problems.append(f"libmagic: {exc}")

    try:
        import phonenumbers

        number = phonenumbers.parse("+4930123456")
        if phonenumbers.region_code_for_number(number) != "DE":
            problems.append("phonenumbers did not place +49 in Germany")
    except Exception as exc:
        problems.append(f"phonenumbers: {exc}")

    try:
        from apscheduler.schedulers.background import BackgroundScheduler

        # Trigger names are resolved through entry points, i.e. the bundled package metadata.
        scheduler = BackgroundScheduler()
        for trigger, args in (("interval", {"seconds": 5}), ("cron", {"minute": "*"})):
            scheduler.add_job(print, trigger, **args)
    except Exception as exc:
        problems.append(f"apscheduler: {exc}")
    return problems


def main() -> None:
    use_bundled_magic_database()
    if sys.argv[1:] == [BUNDLE_CHECK]:
        problems = bundle_check()
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print("bundle ok" if not problems else f"{len(problems)} problem(s)")
        sys.exit(1 if problems else 0)

    from whatsdex.entry import main as program_main

    program_main()


if __name__ == "__main__":
    main()
