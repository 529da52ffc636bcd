/*
 * hutch-init: pid 1 of every hutch sandbox.
 *
 * It reaps every orphan in the sandbox and, when the server handed it a control socket as stdin
 * (an AF_UNIX SOCK_SEQPACKET socket), starts commands on the server's behalf. A fork here costs
 * far less than a `runc exec`, and a child inherits exactly what the sandbox's init was given:
 * namespaces, cgroups, capabilities, no_new_privs, limits.
 *
 * Protocol: one message per packet, integers in host byte order.
 *
 *   server -> init  SPAWN    {u32 type=1, u32 flags, u64 id, u32 argc, u32 envc, u16 rows, u16 cols,
 *                             u32 ngroups}, and with FLAG_USER then {u32 uid, u32 gid,
 *                             u32 groups[ngroups]} (without it ngroups is 0 and nothing follows)
 *                            fds: [payload, stdin, stdout, stderr], or [payload] with FLAG_PTY.
 *                            payload (a memfd): cwd\0 argv[0]\0 ... argv[argc-1]\0 env[0]\0 ...
 *   server -> init  GO       {u32 type=2, u32 0, u64 id}  the child may exec
 *   server -> init  ABORT    {u32 type=3, u32 0, u64 id}  the child exits 255 without exec
 *   init -> server  SPAWNED  {u32 type=4, i32 errno, u64 id}  fds: [pidfd] or [pidfd, pty master]
 *   init -> server  EXITED   {u32 type=5, i32 wait status, u64 id}
 *   server -> init  PARK     {u32 type=6, u32 0, u64 id}  fds: [the server's own end of this socket]
 *   init -> server  PARKED   {u32 type=7, i32 fd number or -errno, u64 id}
 *   server -> init  HELLO    {u32 type=8, u32 0, u64 id}
 *   init -> server  HELLO    {u32 type=8, i32 features, u64 the highest command id it has seen}
 *                            features: FEATURE_KEEP (1) if it knows FLAG_KEEP and what follows
 *                            (an init from before answers 0: a server then keeps nothing)
 *   server -> init  LIST     {u32 type=9, u32 0, u64 id}
 *   init -> server  ENTRY    {u32 type=10, i32 wait status or -1 while running, u64 command id}
 *                            fds: [stdout, stderr] or [stdout, stderr, stdin] (the kept ends)
 *   init -> server  LISTED   {u32 type=11, i32 number of ENTRYs or -errno, u64 LIST's id}
 *   server -> init  FORGET   {u32 type=12, u32 0, u64 id}  close a kept command's ends, drop it
 *   server -> init  STDIN_EOF {u32 type=13, u32 0, u64 id}  close a kept command's stdin end
 *
 * PARK is how the control socket outlives the server: the init holds the server's end (never
 * reading it) at the fd number PARKED names, so a server that exits or is killed leaves the
 * socket open, and a restarted one takes its end back with pidfd_getfd(2) and asks HELLO for the
 * ids already used. Nothing the init sends is lost meanwhile: a message the socket cannot take
 * (its queue is full while no server reads) waits in order in the init's own bounded queue, and
 * the init keeps reaping.
 *
 * KEEP (a SPAWN flag, pipes only) is how a command outlives the server: the SPAWN then carries
 * three more fds, the server's own ends of the command's pipes (stdout and stderr read ends,
 * stdin write end). The init holds them (never reading or writing) and, once the command is
 * reaped, its wait status, until the server sends FORGET. So a server that dies does not end
 * the command's pipes (no SIGPIPE, no EOF on stdin), and a restarted one asks LIST for every
 * kept command: one ENTRY each (with dups of the ends), then LISTED. The command's output is
 * kept by the server (see _process.py), not here: this keeps only descriptors and numbers.
 *
 * A spawned child waits for GO before it execs, so that the server can first move it into the
 * command's own cgroup (kill takes the whole tree from there). It runs the command with its
 * stdio on the descriptors the server sent (or on a new pseudo-terminal whose master goes back to
 * the server), in a session of its own. With FLAG_USER it then takes the command's credentials:
 * setgroups, setresgid, setresuid, in that order (the last drops the capabilities of a non-root
 * user), each checked. If any of these fails, or the working directory or the program is missing,
 * it says so on its stderr and exits 255; it never execs with credentials it was not asked for.
 *
 * A SPAWN is refused with an errno in SPAWNED (the command never exists) when it is malformed:
 * unknown flags, a length that does not match its flags and ngroups (or that overflows the
 * receive buffer), more than MAX_GROUPS groups, an id above MAX_ID, or counts that do not match
 * the payload. Packets too short to carry an id, and other malformed packets, are ignored.
 *
 * Without a control socket (or once it is closed for good) the init only reaps. It is not
 * dumpable, so nothing in the sandbox can ptrace it or open its descriptors through /proc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

enum {
    SPAWN = 1, GO = 2, ABORT = 3, SPAWNED = 4, EXITED = 5, PARK = 6, PARKED = 7, HELLO = 8,
    LIST = 9, ENTRY = 10, LISTED = 11, FORGET = 12, STDIN_EOF = 13
};
enum { FLAG_PTY = 1, FLAG_USER = 2, FLAG_KEEP = 4 };
enum { FEATURE_KEEP = 1 };
#define MAX_KEPT 320 /* commands kept at once; a server keeps at most 288 per sandbox */
#define MAX_CHILDREN 4096
#define MAX_PAYLOAD (8u << 20)
#define MAX_GROUPS 64
#define MAX_ID 65535u /* the sandbox's user namespace maps ids 0..65535 */

struct spawn_msg {
    uint32_t type, flags;
    uint64_t id;
    uint32_t argc, envc;
    uint16_t rows, cols;
    uint32_t ngroups;
};
_Static_assert(sizeof(struct spawn_msg) == 32, "SPAWN's header is 32 bytes");

/* What follows the header of a SPAWN with FLAG_USER; only ngroups entries of groups are sent. */
struct spawn_user {
    uint32_t uid, gid;
    uint32_t groups[MAX_GROUPS];
};

struct spawn_full {
    struct spawn_msg h;
    struct spawn_user u;
};

struct short_msg {
    uint32_t type;
    int32_t value;
    uint64_t id;
};

struct child {
    uint64_t id;
    pid_t pid;
    int go_fd; /* write end of the child's GO pipe, -1 once used */
};

/* A command whose pipe ends the init keeps for the server (FLAG_KEEP). */
struct kept {
    uint64_t id;
    int status; /* wait status once reaped, else -1 */
    int fds[3]; /* the server's stdout, stderr and stdin ends; -1 once closed */
};

static struct kept kept[MAX_KEPT];
static int nkept;
static struct child children[MAX_CHILDREN];
static int nchildren;
static int ctl = -1;
static int parked = -1;    /* the server's end of ctl (PARK), kept open across server restarts */
static uint64_t max_id;    /* the highest command id seen (HELLO) */
static struct rlimit nofile; /* the sandbox's own limit, given back to each command */

/* Messages the socket could not take yet, oldest first: at most a SPAWNED and an EXITED per
 * child, and one answer per request being handled, so this never overflows. */
#define MAX_PENDING (2 * MAX_CHILDREN + 8 + 4 * (MAX_KEPT + 1))
struct pending {
    struct short_msg m;
    int fds[3], nfds;
};
static struct pending pending[MAX_PENDING];
static int npending, pending_head;

extern char **environ;

static void release_go(struct child *c, char what);

static void close_all(const int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* The control socket is closed for good: from now on, only reap. Children still waiting for GO
 * exit, and messages not yet sent are dropped. */
static void close_ctl(void) {
    if (ctl < 0)
        return;
    close(ctl);
    ctl = -1;
    for (; npending > 0; npending--, pending_head = (pending_head + 1) % MAX_PENDING)
        for (int i = 0; i < pending[pending_head].nfds; i++)
            close(pending[pending_head].fds[i]);
    for (int i = 0; i < nchildren; i++)
        release_go(&children[i], 'x');
}

/* Send one message without blocking: 0, or -1 with errno (EAGAIN: the socket's queue is full). */
static int try_send(const struct short_msg *m, const int *fds, int nfds) {
    struct iovec iov = {(void *)m, sizeof *m};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof u);
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(ctl, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : 0;
}

/* Send what waits, in order, until the socket is full again. */
static void flush_pending(void) {
    while (npending > 0 && ctl >= 0) {
        struct pending *q = &pending[pending_head];
        if (try_send(&q->m, q->fds, q->nfds) < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                close_ctl();
            return;
        }
        for (int i = 0; i < q->nfds; i++)
            close(q->fds[i]);
        pending_head = (pending_head + 1) % MAX_PENDING;
        npending--;
    }
}

/* Send a message (the caller keeps its fds), or queue it behind those waiting. */
static void send_msg(uint32_t type, int32_t value, uint64_t id, const int *fds, int nfds) {
    if (ctl < 0)
        return;
    struct short_msg m = {type, value, id};
    if (npending == 0) {
        if (try_send(&m, fds, nfds) == 0)
            return;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            close_ctl();
            return;
        }
    }
    if (npending == MAX_PENDING)
        return; /* cannot happen: see MAX_PENDING */
    struct pending *q = &pending[(pending_head + npending) % MAX_PENDING];
    q->m = m;
    q->nfds = 0;
    for (int i = 0; i < nfds; i++) {
        int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (d >= 0)
            q->fds[q->nfds++] = d;
    }
    npending++;
}

static struct kept *find_kept(uint64_t id) {
    for (int i = 0; i < nkept; i++)
        if (kept[i].id == id)
            return &kept[i];
    return NULL;
}

static void forget(struct kept *k) {
    close_all(k->fds, 3);
    *k = kept[--nkept];
}

static struct child *find(uint64_t id) {
    for (int i = 0; i < nchildren; i++)
        if (children[i].id == id)
            return &children[i];
    return NULL;
}

static void release_go(struct child *c, char what) {
    if (c->go_fd < 0)
        return;
    ssize_t n;
    do
        n = write(c->go_fd, &what, 1);
    while (n < 0 && errno == EINTR);
    close(c->go_fd);
    c->go_fd = -1;
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nchildren; i++) {
            if (children[i].pid != pid)
                continue;
            send_msg(EXITED, status, children[i].id, NULL, 0);
            struct kept *k = find_kept(children[i].id);
            if (k)
                k->status = status;
            if (children[i].go_fd >= 0)
                close(children[i].go_fd);
            children[i] = children[--nchildren];
            break;
        }
    }
}

/* Split the payload into cwd, argv and envp (NULL-terminated arrays), or return an errno. */
static int parse_payload(int fd, const struct spawn_msg *m, char **cwd, char ***argv, char ***envp) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return errno;
    if (st.st_size <= 0 || (uint64_t)st.st_size > MAX_PAYLOAD || m->argc == 0 ||
        m->argc > MAX_PAYLOAD / 2 || m->envc > MAX_PAYLOAD / 2)
        return E2BIG;
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    char **av = calloc(m->argc + 1, sizeof *av);
    char **ev = calloc(m->envc + 1, sizeof *ev);
    if (!buf || !av || !ev)
        goto nomem;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto bad;
        got += (size_t)n;
    }
    buf[size] = '\0';
    char *p = buf, *end = buf + size;
    uint64_t want = 1 + (uint64_t)m->argc + m->envc;
    for (uint64_t i = 0; i < want; i++) {
        char *nul = memchr(p, '\0', (size_t)(end - p));
        if (!nul)
            goto bad;
        if (i == 0)
            *cwd = p;
        else if (i <= m->argc)
            av[i - 1] = p;
        else
            ev[i - 1 - m->argc] = p;
        p = nul + 1;
    }
    if (p != end)
        goto bad;
    *argv = av;
    *envp = ev;
    return 0;
bad:
    free(buf);
    free(av);
    free(ev);
    return EINVAL;
nomem:
    free(buf);
    free(av);
    free(ev);
    return ENOMEM;
}

/* Take the command's credentials; NULL on success, else the call that failed (errno set). */
static const char *become(const struct spawn_user *u, uint32_t ngroups) {
    gid_t groups[MAX_GROUPS];
    for (uint32_t i = 0; i < ngroups; i++)
        groups[i] = u->groups[i];
    if (setgroups(ngroups, groups) < 0)
        return "setgroups";
    if (setresgid(u->gid, u->gid, u->gid) < 0)
        return "setresgid";
    if (setresuid(u->uid, u->uid, u->uid) < 0)
        return "setresuid";
    /* Belt and braces: a command must never run with ids it was not asked for. */
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (getresuid(&r, &e, &s) < 0 || getresgid(&rg, &eg, &sg) < 0)
        return "getresuid";
    if (r != u->uid || e != u->uid || s != u->uid || rg != u->gid || eg != u->gid ||
        sg != u->gid) {
        errno = EPERM;
        return "setresuid";
    }
    return NULL;
}

static void child_main(const struct spawn_msg *m, const struct spawn_user *user, int go_r,
                       int master, const int *stdio, const char *cwd, char **argv, char **envp) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setrlimit(RLIMIT_NOFILE, &nofile);
    setsid();
    if (m->flags & FLAG_PTY) {
        int s = ioctl(master, TIOCGPTPEER, O_RDWR);
        if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0)
            _exit(255);
        /* The user owns its terminal, as under runc, so that reopening it by name works. A failure
         * is not fatal: the command still has the terminal on its stdio. */
        if (user && fchown(s, user->uid, (gid_t)-1) < 0) {
        }
        for (int i = 0; i < 3; i++)
            if (dup2(s, i) < 0)
                _exit(255);
    } else {
        for (int i = 0; i < 3; i++)
            if (dup2(stdio[i], i) < 0)
                _exit(255);
    }
    char go = 0;
    ssize_t n;
    do
        n = read(go_r, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'g')
        _exit(255);
    syscall(SYS_close_range, 3U, ~0U, 0U);
    if (user) {
        const char *failed = become(user, m->ngroups);
        if (failed) {
            dprintf(2, "hutch: cannot run as uid %u, gid %u: %s: %s\n", (unsigned)user->uid,
                    (unsigned)user->gid, failed, strerror(errno));
            _exit(255);
        }
    }
    /* After taking the credentials: a user cannot work in a directory it could not enter. */
    if (chdir(cwd) < 0) {
        dprintf(2, "hutch: cannot use working directory %s: %s\n", cwd, strerror(errno));
        _exit(255);
    }
    environ = envp;
    execvp(argv[0], argv);
    dprintf(2, "hutch: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(255);
}

/* Whether a SPAWN of `len` bytes is well formed: 0 or an errno. */
static int check_spawn(const struct spawn_full *f, size_t len) {
    const struct spawn_msg *m = &f->h;
    if (len < sizeof *m)
        return EBADMSG;
    if (m->flags & ~(uint32_t)(FLAG_PTY | FLAG_USER | FLAG_KEEP))
        return EINVAL;
    if ((m->flags & FLAG_PTY) && (m->flags & FLAG_KEEP))
        return EINVAL; /* a terminal's output cannot be kept */
    if (!(m->flags & FLAG_USER))
        return m->ngroups == 0 && len == sizeof *m ? 0 : EBADMSG;
    if (m->ngroups > MAX_GROUPS ||
        len != sizeof *m + offsetof(struct spawn_user, groups) + m->ngroups * sizeof(uint32_t))
        return EBADMSG;
    if (f->u.uid > MAX_ID || f->u.gid > MAX_ID)
        return EINVAL;
    for (uint32_t i = 0; i < m->ngroups; i++)
        if (f->u.groups[i] > MAX_ID)
            return EINVAL;
    return 0;
}

static void spawn(const struct spawn_full *f, size_t len, int *fds, int nfds) {
    const struct spawn_msg *m = &f->h;
    const struct spawn_user *user = (m->flags & FLAG_USER) ? &f->u : NULL;
    char *cwd = NULL, **argv = NULL, **envp = NULL;
    int pty = (m->flags & FLAG_PTY) != 0;
    int keep = (m->flags & FLAG_KEEP) != 0;
    int want = (pty ? 1 : 4) + (keep ? 3 : 0);
    int master = -1, go[2] = {-1, -1};
    int err = check_spawn(f, len);
    if (m->id > max_id)
        max_id = m->id;
    if (!err && (nfds != want || nchildren >= MAX_CHILDREN || find(m->id)))
        err = nfds != want ? EBADMSG : (nchildren >= MAX_CHILDREN ? EAGAIN : EEXIST);
    if (!err && keep && (nkept >= MAX_KEPT || find_kept(m->id)))
        err = nkept >= MAX_KEPT ? EAGAIN : EEXIST;
    if (!err)
        err = parse_payload(fds[0], m, &cwd, &argv, &envp);
    if (!err && pty) {
        int dir = open(cwd, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0)
            err = errno;
        else
            close(dir);
    }
    if (!err && pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || unlockpt(master) < 0)
            err = errno;
        else {
            struct winsize ws = {.ws_row = m->rows ? m->rows : 24, .ws_col = m->cols ? m->cols : 80};
            ioctl(master, TIOCSWINSZ, &ws);
        }
    }
    if (!err && pipe2(go, O_CLOEXEC) < 0)
        err = errno;
    pid_t pid = -1;
    if (!err) {
        pid = fork();
        if (pid == 0)
            child_main(m, user, go[0], master, fds + 1, cwd, argv, envp);
        if (pid < 0)
            err = errno;
    }
    int pidfd = -1;
    if (!err) {
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) {
            err = errno;
            kill(pid, SIGKILL);
        }
    }
    if (argv) {
        free(cwd);
        free(argv);
        free(envp);
    }
    close_all(fds, err || !keep ? nfds : 4); /* on success the kept ends stay (below) */
    if (go[0] >= 0)
        close(go[0]);
    if (err) {
        if (go[1] >= 0)
            close(go[1]);
        if (master >= 0)
            close(master);
        send_msg(SPAWNED, err, m->id, NULL, 0);
        return;
    }
    children[nchildren++] = (struct child){m->id, pid, go[1]};
    if (keep)
        kept[nkept++] = (struct kept){m->id, -1, {fds[4], fds[5], fds[6]}};
    int out[2] = {pidfd, master};
    send_msg(SPAWNED, 0, m->id, out, pty ? 2 : 1);
    close(pidfd);
    if (master >= 0)
        close(master);
}

static void on_control(void) {
    union {
        struct spawn_full spawn;
        struct short_msg brief;
        char raw[sizeof(struct spawn_full) + 64]; /* longer is truncated, then refused */
    } m;
    union {
        char buf[CMSG_SPACE(8 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {&m, sizeof m};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    ssize_t n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    int fds[8], nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (nfds < 8)
                fds[nfds++] = fd;
            else
                close(fd);
        }
    }
    if (n <= 0) {
        close_all(fds, nfds);
        close_ctl();
        return;
    }
    if (n < (ssize_t)sizeof(struct short_msg)) {
        close_all(fds, nfds);
        return; /* malformed, without an id to answer: ignore */
    }
    int truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    if (m.brief.type == SPAWN) { /* long enough to carry its id: always answered */
        spawn(&m.spawn, truncated ? 0 : (size_t)n, fds, nfds); /* a length of 0 is refused */
        return;
    }
    if (m.brief.type == PARK && !truncated && n == (ssize_t)sizeof m.brief && nfds == 1) {
        if (parked >= 0)
            close(parked);
        parked = fds[0];
        send_msg(PARKED, parked, m.brief.id, NULL, 0);
        return;
    }
    close_all(fds, nfds);
    if (truncated)
        return;
    if (m.brief.type == HELLO && n == (ssize_t)sizeof m.brief) {
        /* A new server took over: it never sends GO for a spawn of the one before. */
        for (int i = 0; i < nchildren; i++)
            release_go(&children[i], 'x');
        send_msg(HELLO, FEATURE_KEEP, max_id, NULL, 0);
        return;
    }
    if (m.brief.type == LIST && n == (ssize_t)sizeof m.brief) {
        if (npending + nkept + 1 > MAX_PENDING) {
            send_msg(LISTED, -EAGAIN, m.brief.id, NULL, 0);
            return;
        }
        for (int i = 0; i < nkept; i++) {
            int out[3], nout = 0;
            for (int j = 0; j < 3 && kept[i].fds[j] >= 0; j++)
                out[nout++] = kept[i].fds[j];
            send_msg(ENTRY, kept[i].status, kept[i].id, out, nout);
        }
        send_msg(LISTED, nkept, m.brief.id, NULL, 0);
        return;
    }
    if ((m.brief.type == FORGET || m.brief.type == STDIN_EOF) && n == (ssize_t)sizeof m.brief) {
        struct kept *k = find_kept(m.brief.id);
        if (k && m.brief.type == FORGET)
            forget(k);
        else if (k && k->fds[2] >= 0) {
            close(k->fds[2]);
            k->fds[2] = -1;
        }
        return;
    }
    if ((m.brief.type == GO || m.brief.type == ABORT) && n == (ssize_t)sizeof m.brief) {
        struct child *c = find(m.brief.id);
        if (c)
            release_go(c, m.brief.type == GO ? 'g' : 'x');
    }
}

int main(void) {
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* Kept commands hold three fds each here: take the hard limit, not the soft one (a command
     * gets the sandbox's own back before it execs). */
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        struct rlimit mine = {nofile.rlim_max, nofile.rlim_max};
        setrlimit(RLIMIT_NOFILE, &mine);
    } else {
        nofile.rlim_cur = nofile.rlim_max = RLIM_INFINITY;
    }
    struct stat st;
    if (fstat(0, &st) == 0 && S_ISSOCK(st.st_mode))
        ctl = fcntl(0, F_DUPFD_CLOEXEC, 3);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        close(null);
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        return 1;
    for (;;) {
        struct pollfd p[2] = {{sfd, POLLIN, 0}, {ctl, POLLIN | (npending ? POLLOUT : 0), 0}};
        int n = poll(p, ctl >= 0 ? 2 : 1, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        if (p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
            reap();
        }
        if (ctl >= 0 && (p[1].revents & POLLOUT))
            flush_pending();
        if (ctl >= 0 && (p[1].revents & ~POLLOUT))
            on_control();
    }
}
