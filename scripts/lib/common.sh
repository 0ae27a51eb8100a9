# Shell functions the bench scripts share; sourced (`. scripts/lib/common.sh`) from the
# repository's root, not run.

# A TCP port free on 127.0.0.1 now (the kernel's pick for a socket bound to port 0). Another
# process may take it before the caller binds it; the scripts start one thing per port at once.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
