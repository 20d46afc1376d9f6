"""Mount discovery rules on sample mountinfo text: selection, deduplication, order, errors."""

from __future__ import annotations

import pytest

from quiesce.errors import FreezeError
from quiesce.freezing.mounts import (
    discover_mounts,
    freeze_order,
    parse_mountinfo,
    select_freezable,
    unescape,
)

# A VM: root on vda, /var/lib/postgresql on vdb with pg_wal nested on vdc, a bind mount of
# vdb's data elsewhere, tmpfs, overlay, nfs, proc/sys/dev, a mount point with spaces, and two
# btrfs subvolumes of one device.
SAMPLE = """\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
23 27 0:22 / /sys rw,relatime shared:2 - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime shared:3 - devtmpfs devtmpfs rw,size=1k
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 27 0:30 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,size=800k
40 27 254:16 / /var/lib/postgresql rw,relatime shared:20 - xfs /dev/vdb rw
41 40 254:32 / /var/lib/postgresql/16/main/pg_wal rw,relatime shared:21 - ext4 /dev/vdc rw
42 27 254:16 /16/main /srv/pgdata-bind rw,relatime shared:20 - xfs /dev/vdb rw
43 27 0:40 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a
44 27 0:41 / /mnt/nfs rw - nfs4 srv:/export rw,vers=4.2
45 27 254:48 / /mnt/my\\040backup\\011disk rw - ext4 /dev/vdd rw
46 27 0:50 /@data /srv/data rw - btrfs /dev/vde rw,subvol=/@data
47 27 0:50 /@logs /srv/logs rw - btrfs /dev/vde rw,subvol=/@logs
48 24 0:51 / /dev/hugepages rw - hugetlbfs hugetlbfs rw
49 23 254:64 / /sys/fs/weird rw - ext4 /dev/vdf rw
"""


def points(mounts) -> list[str]:
    return [m.mount_point for m in mounts]


def test_unescape_decodes_octal_escapes() -> None:
    assert unescape(r"/mnt/a\040b\011c\012d\134e") == "/mnt/a b\tc\nd\\e"
    assert unescape("/plain") == "/plain"


def test_parse_reads_fields_and_optional_tags() -> None:
    entries = parse_mountinfo(SAMPLE)
    wal = next(e for e in entries if e.mount_id == 41)
    assert (wal.parent_id, wal.device, wal.root, wal.fstype, wal.source) == (
        40, "254:32", "/", "ext4", "/dev/vdc")
    spaced = next(e for e in entries if e.mount_id == 45)
    assert spaced.mount_point == "/mnt/my backup\tdisk"
    # no optional fields at all
    bare = parse_mountinfo("50 1 8:1 / /x rw - ext4 /dev/sda1 rw\n")[0]
    assert (bare.mount_point, bare.fstype, bare.source) == ("/x", "ext4", "/dev/sda1")


def test_parse_rejects_malformed_line() -> None:
    with pytest.raises(FreezeError, match="line 1 is malformed"):
        parse_mountinfo("garbage line without separator\n")


def test_selects_only_freezable_block_filesystems_once_each() -> None:
    mounts = discover_mounts(mountinfo_text=SAMPLE, backing={})
    assert sorted(points(mounts)) == sorted([
        "/", "/var/lib/postgresql", "/var/lib/postgresql/16/main/pg_wal",
        "/mnt/my backup\tdisk", "/srv/data"])
    # the xfs bind mount and the second btrfs subvolume are the same filesystems
    assert len({m.device for m in mounts}) == len(mounts)
    assert not any(p.startswith(("/proc", "/sys", "/dev")) for p in points(mounts))


def test_nested_mounts_come_before_their_parents() -> None:
    order = points(discover_mounts(mountinfo_text=SAMPLE, backing={}))
    assert order.index("/var/lib/postgresql/16/main/pg_wal") < order.index(
        "/var/lib/postgresql")
    assert order[-1] == "/"


def test_real_mount_preferred_over_bind_of_subdirectory() -> None:
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "42 27 254:16 /sub /bind rw - xfs /dev/vdb rw\n"
            "40 27 254:16 / /real rw - xfs /dev/vdb rw\n")
    mounts = discover_mounts(mountinfo_text=text, backing={})
    assert points(mounts) == ["/real", "/"]


def test_bind_mount_of_same_filesystem_kept_first_when_both_are_roots() -> None:
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "40 27 7:3 / /mnt/a rw - ext4 /dev/loop3 rw\n"
            "41 27 7:3 / /mnt/b rw - ext4 /dev/loop3 rw\n")
    assert points(discover_mounts(mountinfo_text=text, backing={})) == ["/mnt/a", "/"]


def test_hidden_mount_under_a_later_mount_on_same_path_is_skipped() -> None:
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "40 27 7:3 / /mnt/a rw - ext4 /dev/loop3 rw\n"
            "41 40 0:60 / /mnt/a rw - tmpfs tmpfs rw\n")
    assert points(discover_mounts(mountinfo_text=text, backing={})) == ["/"]


def test_loop_filesystem_frozen_before_the_one_holding_its_image() -> None:
    # /mnt/b's image lives on /mnt/a: freezing /mnt/a first would block /mnt/b's freeze.
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "40 27 7:0 / /mnt/b rw - ext4 /dev/loop0 rw\n"
            "41 27 7:1 / /mnt/a rw - ext4 /dev/loop1 rw\n")
    without = points(discover_mounts(mountinfo_text=text, backing={}))
    assert without.index("/mnt/a") < without.index("/mnt/b")  # tie order: later mount first
    backed = points(discover_mounts(mountinfo_text=text,
                                    backing={"/dev/loop0": "/mnt/a/images/b.img"}))
    assert backed.index("/mnt/b") < backed.index("/mnt/a")
    assert backed[-1] == "/"


def test_order_is_stable_under_a_dependency_cycle() -> None:
    # contrived: a's image on b, b nested in a: cycle, falls back to depth order
    entries = parse_mountinfo("40 1 7:0 / /a rw - ext4 /dev/loop0 rw\n"
                              "41 40 7:1 / /a/b rw - ext4 /dev/loop1 rw\n")
    order = freeze_order(entries, {"/dev/loop0": "/a/b/img"})
    assert [e.mount_point for e in order] == ["/a/b", "/a"]


def test_only_limits_and_resolves(tmp_path) -> None:
    link = tmp_path / "link"
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            f"40 27 7:0 / {tmp_path}/m rw - ext4 /dev/loop0 rw\n"
            f"41 27 7:1 / {tmp_path}/n rw - xfs /dev/loop1 rw\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "n").mkdir()
    link.symlink_to(tmp_path / "m")
    mounts = discover_mounts([str(link)], mountinfo_text=text, backing={})
    assert points(mounts) == [f"{tmp_path}/m"]
    both = discover_mounts([f"{tmp_path}/m", f"{tmp_path}/n"], mountinfo_text=text, backing={})
    assert sorted(points(both)) == [f"{tmp_path}/m", f"{tmp_path}/n"]


def test_only_names_each_bad_path_and_why(tmp_path) -> None:
    (tmp_path / "tmpfs").mkdir()
    (tmp_path / "plain").mkdir()
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            f"40 27 0:60 / {tmp_path}/tmpfs rw - tmpfs tmpfs rw\n"
            "44 27 0:41 / /mnt/nfs rw - nfs4 srv:/export rw\n")
    with pytest.raises(FreezeError) as caught:
        discover_mounts([f"{tmp_path}/tmpfs", f"{tmp_path}/plain", f"{tmp_path}/missing"],
                        mountinfo_text=text, backing={})
    message = str(caught.value)
    assert f"{tmp_path}/tmpfs cannot be frozen" in message and "tmpfs" in message
    assert f"{tmp_path}/plain is not a mount point" in message
    assert "lies on the filesystem mounted at /" in message
    assert f"{tmp_path}/missing does not exist" in message
    assert caught.value.hint


def test_only_rejects_network_filesystem() -> None:
    text = "44 1 0:41 / / rw - nfs4 srv:/export rw\n"
    with pytest.raises(FreezeError, match="network filesystem"):
        discover_mounts(["/"], mountinfo_text=text, backing={})


def test_only_with_two_paths_of_one_filesystem_gives_it_once(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = (f"40 1 7:3 / {tmp_path}/a rw - ext4 /dev/loop3 rw\n"
            f"41 1 7:3 / {tmp_path}/b rw - ext4 /dev/loop3 rw\n")
    mounts = discover_mounts([f"{tmp_path}/b", f"{tmp_path}/a"], mountinfo_text=text,
                             backing={})
    assert points(mounts) == [f"{tmp_path}/b"]


def test_select_freezable_skips_btrfs_second_subvolume() -> None:
    chosen = select_freezable(parse_mountinfo(SAMPLE))
    assert [e.mount_point for e in chosen if e.fstype == "btrfs"] == ["/srv/data"]


def test_live_discovery_parses_this_machine() -> None:
    mounts = discover_mounts()  # read-only: parses /proc/self/mountinfo, freezes nothing
    assert all(not m.mount_point.startswith(("/proc/", "/sys/", "/dev/")) for m in mounts)
    assert len({m.device for m in mounts}) == len(mounts)


# -------------------------------------------------- late: the filesystems commits wait for

SIBLINGS = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "40 27 254:16 / /srv/pgdata rw - xfs /dev/vdb rw\n"
            "41 27 254:32 / /srv/pgwal rw - ext4 /dev/vdc rw\n")


def test_a_late_filesystem_is_frozen_after_its_siblings() -> None:
    default = points(discover_mounts(["/srv/pgdata", "/srv/pgwal"], mountinfo_text=SIBLINGS,
                                     backing={}))
    assert default == ["/srv/pgwal", "/srv/pgdata"]  # tie order: later mount first
    late = points(discover_mounts(["/srv/pgdata", "/srv/pgwal"], mountinfo_text=SIBLINGS,
                                  backing={}, late={"254:32"}))
    assert late == ["/srv/pgdata", "/srv/pgwal"]


def test_late_never_breaks_the_nesting_rule() -> None:
    # pg_wal mounted inside the data filesystem: still frozen before its parent
    order = points(discover_mounts(mountinfo_text=SAMPLE, backing={}, late={"254:32"}))
    assert order.index("/var/lib/postgresql/16/main/pg_wal") < order.index(
        "/var/lib/postgresql")
    assert order[-1] == "/"
    # but after every filesystem that does not depend on it
    assert order.index("/var/lib/postgresql/16/main/pg_wal") > order.index(
        "/mnt/my backup\tdisk")


def test_late_never_breaks_the_loop_image_rule() -> None:
    text = ("27 1 254:0 / / rw - ext4 /dev/vda1 rw\n"
            "40 27 7:0 / /mnt/b rw - ext4 /dev/loop0 rw\n"
            "41 27 7:1 / /mnt/a rw - ext4 /dev/loop1 rw\n")
    backed = points(discover_mounts(mountinfo_text=text, late={"7:0"},
                                    backing={"/dev/loop0": "/mnt/a/images/b.img"}))
    assert backed.index("/mnt/b") < backed.index("/mnt/a")
