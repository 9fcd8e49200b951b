"""The rsync/ssh argv builders (pure) and the reading of rsync's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from pve_mirror import rsync
from pve_mirror.errors import ConfigError


def test_ssh_argv_defaults_leave_host_keys_to_the_admin() -> None:
    argv = rsync.ssh_argv(rsync.SshOptions("root@192.0.2.10"))
    assert argv == ["ssh", "-p", "22", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]


def test_ssh_argv_with_key_and_known_hosts() -> None:
    options = rsync.SshOptions(
        "root@192.0.2.10",
        2222,
        Path("/etc/pve/priv/pve-mirror/b.ssh_key"),
        Path("/k/b.known_hosts"),
    )
    argv = rsync.ssh_argv(options)
    assert argv[argv.index("-i") + 1] == "/etc/pve/priv/pve-mirror/b.ssh_key"
    assert "IdentitiesOnly=yes" in argv
    assert "UserKnownHostsFile=/k/b.known_hosts" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222"


def test_push_argv_is_safe_for_pmxcfs() -> None:
    options = rsync.SshOptions("root@192.0.2.10", identity=Path("/a dir/key"))
    argv = rsync.push_argv(Path("/tmp/x"), options, "/etc/pve/pve-mirror/staging/site-a")
    assert argv[0] == "rsync"
    for flag in (
        "--no-links",
        "--no-owner",
        "--no-group",
        "--mkpath",
        "--checksum",
        "--delete-after",
    ):
        assert flag in argv
    assert "--chmod=D0755,F0640" in argv
    # With --perms the receiver fchmods each temporary file to 0600 and pmxcfs refuses
    # every one (rsync exits 23): modes must come from --chmod and the umask alone.
    assert not {"--perms", "-p", "-a", "--archive", "-A", "--acls"} & set(argv)
    assert "--rsync-path=umask 022 && rsync" in argv
    for flag in ("--delay-updates", "--omit-dir-times", "--recursive", "--times"):
        assert flag in argv
    assert argv[-2:] == ["/tmp/x/", "root@192.0.2.10:/etc/pve/pve-mirror/staging/site-a/"]
    shell = argv[argv.index("-e") + 1]
    assert "-i '/a dir/key'" in shell  # rsync splits -e on spaces and honours quotes
    assert "--dry-run" not in argv
    assert "--dry-run" in rsync.push_argv(Path("/tmp/x"), options, "/d", dry_run=True)
    assert "--delete-after" not in rsync.push_argv(Path("/tmp/x"), options, "/d", delete=False)


def test_remote_spec_brackets_ipv6_and_checks_the_path() -> None:
    assert (
        rsync.remote_spec(rsync.SshOptions("root@2001:db8::1"), "/x/") == "root@[2001:db8::1]:/x/"
    )
    assert rsync.remote_spec(rsync.SshOptions("pve-b1"), "/x") == "pve-b1:/x"
    for bad in ("relative/path", "/a b", "/x/../etc", "/x;rm"):
        with pytest.raises(ConfigError):
            rsync.remote_spec(rsync.SshOptions("h"), bad)


def test_quotes_in_paths_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot be passed"):
        rsync.ssh_argv(rsync.SshOptions("h", identity=Path("/x/it's")))


def test_changed_files_from_itemized_output() -> None:
    out = (
        "cd+++++++++ qemu-server/\n"
        ">f+++++++++ qemu-server/100.conf\n"
        ">fc.t...... manifest.json\n"
        "*deleting   lxc/200.conf\n"
        ".f          qemu-server/101.conf\n"
    )
    assert rsync.changed_files(out) == ["qemu-server/100.conf", "manifest.json", "lxc/200.conf"]


def test_explain_prefers_ssh_reason() -> None:
    stderr = (
        "ssh: connect to host 192.0.2.1 port 22: Connection refused\n"
        "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
        "rsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]\n"
    )
    assert rsync.explain(stderr).startswith("ssh: connect to host")
    assert rsync.explain("rsync error: x\n") == "rsync error: x"
    refused = (
        'rsync: [receiver] mkstemp "/etc/pve/s/.m.json.XyZ" failed: Permission denied (13)\n'
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n"
    )
    assert rsync.explain(refused).endswith("failed: Permission denied (13)")
    assert rsync.explain("") == ""
    # The peer's messages were lost: the code's meaning and where to look.
    lost = rsync.explain("", 11)
    assert lost.startswith("rsync code 11: error in file I/O, no reason printed")
    assert "without quorum" in lost


def test_display_is_shell_pasteable() -> None:
    assert rsync.display(["rsync", "-e", "ssh -p 22", "a/"]) == "rsync -e 'ssh -p 22' a/"
