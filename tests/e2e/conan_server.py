"""Runs conan_server (Conan 2) on 127.0.0.1 for the end-to-end tests.

    python conan_server.py DIR PORT USER PASSWORD

Writes DIR/server.conf on first start: the given port, one user, and read and
write permission for that user only (no anonymous reads), so every request the
proxy forwards must carry the proxy's own upstream login.
"""
import os
import re
import sys

from conans.server.launcher import ServerLauncher

directory, port, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(directory, exist_ok=True)
ServerLauncher(server_dir=directory)  # writes a default server.conf
conf_path = os.path.join(directory, "server.conf")
conf = open(conf_path).read()
conf = re.sub(r"(?m)^port:.*$", f"port: {port}", conf)
conf = re.sub(r"(?m)^host_name:.*$", "host_name: 127.0.0.1", conf)
conf = conf.split("\n[write_permissions]\n")[0] + "\n"
conf += (
    f"[write_permissions]\n*/*@*/*: {user}\n\n"
    f"[read_permissions]\n*/*@*/*: {user}\n\n"
    f"[users]\n{user}: {password}\n"
)
open(conf_path, "w").write(conf)
ServerLauncher(server_dir=directory).server.run(host="127.0.0.1")
