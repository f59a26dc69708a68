#!/usr/bin/env bash
# scripts/kafka.sh — start and stop a real single-node Apache Kafka 4.x broker (KRaft mode,
# one JVM that is both broker and controller) for tests and demos.
#
# Why: the tests that claim Kafka behaviour must run against a real broker, and these machines
# have no Docker and no internet except Maven Central. So the broker's own jars are resolved once
# by their Maven coordinates into .cache/kafka/<version>/libs (git-ignored) and the broker runs as
# a plain Java process on free 127.0.0.1 ports, with its data in a fresh temporary folder.
#
# Usage:
#   eval "$(scripts/kafka.sh start [DIR])"   # prints one line:
#                                            #   export KAFKA_BOOTSTRAP=127.0.0.1:PORT KAFKA_RUN_DIR=DIR
#   scripts/kafka.sh stop [DIR]              # DIR defaults to $KAFKA_RUN_DIR; kills the broker, removes DIR
#   scripts/kafka.sh run -- CMD [ARGS...]    # start, run CMD with KAFKA_BOOTSTRAP set, always stop;
#                                            # exits with CMD's status (what CI uses)
#   scripts/kafka.sh down [--kill] [DIR]     # outage: stop (SIGTERM; --kill: SIGKILL) the broker of
#                                            # DIR, keeping its data, ports and folder
#   scripts/kafka.sh up [DIR]                # start that broker again, same ports, same data
#   scripts/kafka.sh tool CLASS [ARGS...]    # run one of Kafka's own command-line tools (e.g.
#                                            # org.apache.kafka.tools.ConsoleProducer, TopicCommand,
#                                            # ProducerPerformance) on the broker's jars plus
#                                            # kafka-tools-<version>.jar (resolved once into
#                                            # .cache/kafka/<version>/tools)
#
# Only the `export` line goes to stdout; all progress goes to stderr. DIR/env holds
# KAFKA_BOOTSTRAP and KAFKA_RUN_DIR; DIR/kafka.log is the broker's log, DIR/kafka.pid its pid.
#
# Environment knobs: KAFKA_VERSION (default 4.1.1), KAFKA_START_TIMEOUT (seconds, default 90),
# KAFKA_HEAP_OPTS (default "-Xmx512m -Xms256m"), KAFKA_SECURITY (see below).
#
# Secured listeners (opt-in): with KAFKA_SECURITY=1 in the environment of `start` or `run`, the
# broker also gets, besides the PLAINTEXT listener above (unchanged, and still the one the
# readiness check and the broker's own traffic use):
#   SASL_SSL        TLS + SASL; mechanisms SCRAM-SHA-512, SCRAM-SHA-256, PLAIN and OAUTHBEARER
#   SSL             TLS with ssl.client.auth=required (mutual TLS: a client certificate is needed)
#   SASL_PLAINTEXT  SASL without TLS; the same four mechanisms
# all on free 127.0.0.1 ports. The start makes, with openssl, into DIR/tls: a test CA (ca.pem), a
# broker certificate for localhost / 127.0.0.1 (subjectAltName) and a client certificate
# (client.pem, key client.key: unencrypted PKCS#8), all signed by that CA; the broker reads them as
# PEM (ssl.keystore.type=PEM, ssl.truststore.type=PEM). One user, with a random password, exists
# for SCRAM-SHA-512/256 and PLAIN: its SCRAM credentials are written at format time
# (StorageTool format --add-scram), its PLAIN one is in the listeners' JAAS config. OAUTHBEARER
# uses Kafka's default (test-only) validator: any unsigned JWT with a `sub` is accepted.
# The `export` line (and DIR/env, and what `run` exports) then also carries:
#   KAFKA_SASL_SSL_BOOTSTRAP KAFKA_SSL_BOOTSTRAP KAFKA_SASL_PLAINTEXT_BOOTSTRAP   127.0.0.1:PORT
#   KAFKA_CA_PEM KAFKA_CLIENT_CERT_PEM KAFKA_CLIENT_KEY_PEM                     file paths
#   KAFKA_SCRAM_USER KAFKA_SCRAM_PASSWORD     the user (for SCRAM-SHA-512/256 and PLAIN alike)
# and DIR holds ready client settings for Kafka's Java tools (TopicCommand --command-config F,
# ConsoleProducer --producer.config F, ConsoleConsumer --consumer.config F):
#   client-sasl_ssl.properties (SCRAM-SHA-512) client-ssl.properties client-sasl_plaintext.properties
# Without KAFKA_SECURITY (or with it empty or 0) nothing of this happens.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
CACHE_DIR=$ROOT/.cache/kafka/$KAFKA_VERSION
LIBS_DIR=$CACHE_DIR/libs
MARKER=$LIBS_DIR/.complete
# log4j2 version of the SLF4J binding added next to the broker (2.24.3 is what Kafka 4.1 ships).
LOG4J_VERSION=${KAFKA_LOG4J_VERSION:-2.24.3}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}
# Kafka's own defaults (kafka-run-class.sh), with GC threads sized for a 2-core machine.
GC_OPTS="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
 -XX:+ExplicitGCInvokesConcurrent -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1
 -XX:MaxInlineLevel=15 -Djava.awt.headless=true"
# Short-lived tool JVMs (storage format): start fast, stay small.
TOOL_OPTS="-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true"

RUN_DIR=""        # the run folder of the broker this process started or stops
OWN_RUN_DIR=0     # 1 when this process created RUN_DIR (mktemp), so it may remove it on failure
KAFKA_BOOTSTRAP=""
# Secured listeners (KAFKA_SECURITY=1): 1 when on, and what `start` then exports.
SECURE=0
case ${KAFKA_SECURITY:-} in "" | 0) ;; *) SECURE=1 ;; esac
SECURE_VARS=(KAFKA_SASL_SSL_BOOTSTRAP KAFKA_SSL_BOOTSTRAP KAFKA_SASL_PLAINTEXT_BOOTSTRAP
  KAFKA_CA_PEM KAFKA_CLIENT_CERT_PEM KAFKA_CLIENT_KEY_PEM KAFKA_SCRAM_USER KAFKA_SCRAM_PASSWORD)

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: eval "$(scripts/kafka.sh start [DIR])"
       scripts/kafka.sh stop [DIR]            (DIR defaults to $KAFKA_RUN_DIR)
       scripts/kafka.sh run -- CMD [ARGS...]
       scripts/kafka.sh down [--kill] [DIR]   (DIR defaults to $KAFKA_RUN_DIR; keeps the data)
       scripts/kafka.sh up [DIR]
       scripts/kafka.sh tool CLASS [ARGS...]
       (KAFKA_SECURITY=1 before start/run adds SASL_SSL, SSL and SASL_PLAINTEXT listeners)
EOF
  exit 2
}

# --- 1. resolve the broker's jars once --------------------------------------------------------

resolve_libs() {
  [[ -f $MARKER ]] && return 0
  command -v mvn >/dev/null || die "mvn not found; it is needed once to resolve Kafka's jars"
  mkdir -p "$CACHE_DIR"
  # Serialize concurrent first runs; fd 9 is closed again before the broker is launched.
  exec 9>"$CACHE_DIR/.lock"
  flock 9
  if [[ ! -f $MARKER ]]; then
    log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies (once)"
    cat >"$CACHE_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-sh</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The broker logs through SLF4J 1.7; its pom brings no binding (the distribution's tarball
         adds one), so without this the broker logs nothing at all. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
    rm -rf "$CACHE_DIR/libs.tmp"
    # (Debian's mvn prints bare ANSI resets even with -q -B; strip them.)
    if ! mvn -q -B -Dstyle.color=never -f "$CACHE_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$CACHE_DIR/libs.tmp" </dev/null 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2; then
      die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (is Maven Central reachable?)"
    fi
    [[ -f $CACHE_DIR/libs.tmp/kafka_2.13-$KAFKA_VERSION.jar ]] \
      || die "resolution finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
    [[ -f $CACHE_DIR/libs.tmp/log4j-slf4j-impl-$LOG4J_VERSION.jar ]] \
      || die "resolution finished but log4j-slf4j-impl-$LOG4J_VERSION.jar is missing"
    touch "$CACHE_DIR/libs.tmp/.complete"
    rm -rf "$LIBS_DIR"
    mv "$CACHE_DIR/libs.tmp" "$LIBS_DIR"
    log "cached $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars in ${LIBS_DIR#"$ROOT"/}"
  fi
  exec 9>&-
}

# --- helpers ----------------------------------------------------------------------------------

# $1 (default two) distinct free loopback ports (all sockets held open while choosing).
free_ports() {
  python3 - "${1:-2}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# A cluster id as Kafka makes them: 16 random bytes, base64url without padding, not starting '-'.
cluster_id() {
  python3 - <<'PY'
import base64, uuid
while True:
    u = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not u.startswith("-"):
        print(u)
        break
PY
}

# Exit 0 when the broker on 127.0.0.1:$1 answers a Metadata request (v4; Kafka 4 dropped v0-v3)
# listing at least one broker and a known controller. This is sent to the PLAINTEXT listener,
# which the broker only opens for requests once its startup has completed.
metadata_ok() {
  python3 - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
client = b"kafka.sh"
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
# body v4: topics = [] (none; brokers and controller still come back), allow_auto_topic_creation=false
req = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(req)) + req)
        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf
        size, = struct.unpack(">i", read(4))
        body = read(size)
except (OSError, EOFError):
    sys.exit(1)
off = 0
def i32():
    global off
    v, = struct.unpack_from(">i", body, off); off += 4; return v
def i16():
    global off
    v, = struct.unpack_from(">h", body, off); off += 2; return v
def string():
    global off
    n = i16()
    if n < 0:
        return None
    v = body[off:off + n].decode(); off += n; return v
try:
    if i32() != 7:           # correlation id
        sys.exit(1)
    i32()                    # throttle_time_ms
    brokers = i32()
    for _ in range(max(brokers, 0)):
        i32(); string(); i32(); string()   # node_id, host, port, rack
    string()                 # cluster_id
    controller = i32()
except struct.error:
    sys.exit(1)
sys.exit(0 if brokers >= 1 and controller >= 0 else 1)
PY
}

# Is $1 a live (not zombie) process?
alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

# Stop the broker whose pid is in $1/kafka.pid: TERM, wait up to 15 s, then KILL.
kill_broker() {
  local dir=$1 pid cmdline i
  [[ -f $dir/kafka.pid ]] || return 0
  pid=$(<"$dir/kafka.pid")
  [[ $pid =~ ^[0-9]+$ ]] || { log "ignoring malformed pid file $dir/kafka.pid"; return 0; }
  if ! alive "$pid"; then
    wait "$pid" 2>/dev/null || true
    return 0
  fi
  # Only signal the process if it is really the broker started for this folder (pids get reused).
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  if [[ $cmdline != *kafka.Kafka*"$dir/server.properties"* ]]; then
    log "pid $pid is not the broker of $dir; not signalling it"
    return 0
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "broker did not stop within 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
  fi
  wait "$pid" 2>/dev/null || true   # reap it when it is our own child (run mode)
}

# --- 2.-4. write config, format, start, wait --------------------------------------------------

# Cleanup if `start` fails part-way: stop what was started; remove the folder if we made it.
on_start_exit() {
  local rc=$?
  if ((rc != 0)) && [[ -n $RUN_DIR ]]; then
    kill_broker "$RUN_DIR"
    if ((OWN_RUN_DIR)); then rm -rf "$RUN_DIR"; fi
  fi
  exit "$rc"
}

start_broker() {
  local dir=${1:-} ports broker_port controller_port cid pid deadline
  local sasl_ssl_port ssl_port sasl_plaintext_port format_extra=()
  local listeners advertised protocol_map
  command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+)"
  command -v python3 >/dev/null || die "python3 not found"
  resolve_libs

  if [[ -z $dir ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/kafka-run.XXXXXX")
    OWN_RUN_DIR=1
  else
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -z $(ls -A "$dir") ]] || die "run folder $dir is not empty"
  fi
  RUN_DIR=$dir
  trap on_start_exit EXIT

  if ((SECURE)); then
    command -v openssl >/dev/null || die "openssl not found (KAFKA_SECURITY=1 makes certificates with it)"
    ports=$(free_ports 5)
    read -r broker_port controller_port sasl_ssl_port ssl_port sasl_plaintext_port <<<"$ports"
  else
    ports=$(free_ports)
    read -r broker_port controller_port <<<"$ports"
  fi
  KAFKA_BOOTSTRAP=127.0.0.1:$broker_port
  listeners=PLAINTEXT://127.0.0.1:$broker_port,CONTROLLER://127.0.0.1:$controller_port
  advertised=PLAINTEXT://127.0.0.1:$broker_port
  protocol_map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
  if ((SECURE)); then
    KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sasl_ssl_port
    KAFKA_SSL_BOOTSTRAP=127.0.0.1:$ssl_port
    KAFKA_SASL_PLAINTEXT_BOOTSTRAP=127.0.0.1:$sasl_plaintext_port
    listeners+=,SASL_SSL://$KAFKA_SASL_SSL_BOOTSTRAP,SSL://$KAFKA_SSL_BOOTSTRAP
    listeners+=,SASL_PLAINTEXT://$KAFKA_SASL_PLAINTEXT_BOOTSTRAP
    advertised+=,SASL_SSL://$KAFKA_SASL_SSL_BOOTSTRAP,SSL://$KAFKA_SSL_BOOTSTRAP
    advertised+=,SASL_PLAINTEXT://$KAFKA_SASL_PLAINTEXT_BOOTSTRAP
    protocol_map+=,SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT
  fi

  cat >"$dir/server.properties" <<EOF
# Single-node KRaft broker+controller written by scripts/kafka.sh
process.roles=broker,controller
node.id=1
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocol_map
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# Every internal topic: replication factor 1 (one node). Few partitions: fast first group/txn use.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Small footprint for a shared 2-core machine.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF

  cat >"$dir/log4j2.properties" <<'EOF'
# Broker logging for scripts/kafka.sh: to stdout (redirected to kafka.log), INFO, noisy parts at WARN.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.storage.name = org.apache.kafka.storage
logger.storage.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.utils.name = org.apache.kafka.common.utils.AppInfoParser
logger.utils.level = WARN
EOF

  if ((SECURE)); then
    secure_setup "$dir"
    format_extra=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]"
      --add-scram "SCRAM-SHA-256=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
  fi

  cid=$(cluster_id)
  log "formatting storage in $dir (cluster id $cid)"
  # shellcheck disable=SC2086 # option strings are split on purpose
  if ! java $TOOL_OPTS -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS_DIR/*" \
      kafka.tools.StorageTool format --standalone -t "$cid" -c "$dir/server.properties" \
      ${format_extra[@]+"${format_extra[@]}"} >"$dir/format.log" 2>&1; then
    tail -n 50 "$dir/format.log" >&2
    die "formatting the storage failed"
  fi

  log "starting Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP (controller 127.0.0.1:$controller_port)"
  launch_and_wait "$dir" "$broker_port"

  printf 'KAFKA_BOOTSTRAP=%s\nKAFKA_RUN_DIR=%s\n' "$KAFKA_BOOTSTRAP" "$dir" >"$dir/env"
  if ((SECURE)); then
    wait_secure_listeners "$dir"
    local var
    for var in "${SECURE_VARS[@]}"; do
      printf '%s=%q\n' "$var" "${!var}" >>"$dir/env"
    done
    log "secured listeners: SASL_SSL $KAFKA_SASL_SSL_BOOTSTRAP, SSL (mTLS) $KAFKA_SSL_BOOTSTRAP," \
      "SASL_PLAINTEXT $KAFKA_SASL_PLAINTEXT_BOOTSTRAP"
  fi
  trap - EXIT
  log "broker ready on $KAFKA_BOOTSTRAP (pid $(<"$dir/kafka.pid"), run dir $dir)"
}

# --- secured listeners (KAFKA_SECURITY=1) -----------------------------------------------------

# Make the test CA and the broker's and the client's certificates in $1/tls with openssl; pick the
# SASL user and password; append the secured listeners' settings to $1/server.properties; write
# client settings for Kafka's Java tools. Sets KAFKA_CA_PEM, KAFKA_CLIENT_*_PEM, KAFKA_SCRAM_*.
secure_setup() {
  local dir=$1 tls=$1/tls jaas_scram jaas_plain jaas_oauth name
  mkdir -p "$tls"
  log "making a test CA and broker/client certificates in $tls"
  (
    set -e
    cd "$tls"
    exec 2>>openssl.log
    # EC P-256 keys: fast to make; openssl genpkey writes unencrypted PKCS#8 ("BEGIN PRIVATE
    # KEY"), the only private-key form Kafka's PEM key store reads besides encrypted PKCS#8.
    for name in ca broker client; do
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
    done
    openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=kafka.sh test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.pem
    openssl req -new -key broker.key -subj "/CN=localhost" -out broker.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 30 \
      -extfile broker.ext -out broker.pem
    openssl req -new -key client.key -subj "/CN=permit-stats-test-client" -out client.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAserial ca.srl -sha256 -days 30 \
      -extfile client.ext -out client.pem
    # PEM key stores (key first, then its certificate chain) for the broker and for Java clients.
    cat broker.key broker.pem ca.pem >broker-keystore.pem
    cat client.key client.pem ca.pem >client-keystore.pem
    rm -f ./*.csr ./*.ext
    chmod 600 ./*.key ./*-keystore.pem
  ) || { tail -n 20 "$tls/openssl.log" >&2; die "making the test certificates failed"; }

  # (read through ${!var} over SECURE_VARS)
  # shellcheck disable=SC2034
  KAFKA_CA_PEM=$tls/ca.pem KAFKA_CLIENT_CERT_PEM=$tls/client.pem KAFKA_CLIENT_KEY_PEM=$tls/client.key
  KAFKA_SCRAM_USER=permit-stats
  # Letters and digits only: it goes into --add-scram's [..] syntax and a JAAS string.
  KAFKA_SCRAM_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

  jaas_scram='org.apache.kafka.common.security.scram.ScramLoginModule required;'
  jaas_oauth='org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;'
  jaas_plain="org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SCRAM_USER=\"$KAFKA_SCRAM_PASSWORD\";"
  {
    printf '%s\n' "# Secured listeners (KAFKA_SECURITY=1). The broker's own traffic stays on PLAINTEXT."
    printf '%s\n' "# One TLS identity for SASL_SSL and SSL; PEM files, no JKS/PKCS12 stores."
    printf '%s\n' "ssl.keystore.type=PEM" "ssl.keystore.location=$tls/broker-keystore.pem" \
      "ssl.truststore.type=PEM" "ssl.truststore.location=$tls/ca.pem"
    printf '%s\n' "# SSL: mutual TLS, a client certificate signed by the test CA is required."
    printf '%s\n' "listener.name.ssl.ssl.client.auth=required"
    for name in sasl_ssl sasl_plaintext; do
      printf '%s\n' "# ${name^^}: SCRAM (credentials written at format time), PLAIN (JAAS below) and" \
        "# OAUTHBEARER with Kafka's default validator, which accepts unsecured (unsigned) JWTs."
      printf '%s\n' \
        "listener.name.$name.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN,OAUTHBEARER" \
        "listener.name.$name.scram-sha-512.sasl.jaas.config=$jaas_scram" \
        "listener.name.$name.scram-sha-256.sasl.jaas.config=$jaas_scram" \
        "listener.name.$name.plain.sasl.jaas.config=$jaas_plain" \
        "listener.name.$name.oauthbearer.sasl.jaas.config=$jaas_oauth"
    done
  } >>"$dir/server.properties"

  # Client settings for Kafka's Java tools (--command-config / --producer.config / ...).
  local sasl_jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$KAFKA_SCRAM_USER\" password=\"$KAFKA_SCRAM_PASSWORD\";"
  printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
    "sasl.jaas.config=$sasl_jaas" "ssl.truststore.type=PEM" "ssl.truststore.location=$tls/ca.pem" \
    >"$dir/client-sasl_ssl.properties"
  printf '%s\n' "security.protocol=SSL" "ssl.truststore.type=PEM" \
    "ssl.truststore.location=$tls/ca.pem" "ssl.keystore.type=PEM" \
    "ssl.keystore.location=$tls/client-keystore.pem" >"$dir/client-ssl.properties"
  printf '%s\n' "security.protocol=SASL_PLAINTEXT" "sasl.mechanism=SCRAM-SHA-512" \
    "sasl.jaas.config=$sasl_jaas" >"$dir/client-sasl_plaintext.properties"
  chmod 600 "$dir"/client-*.properties
}

# The secured listeners open together with PLAINTEXT; still, see each accept a connection.
wait_secure_listeners() {
  local dir=$1 addr deadline=$((SECONDS + 15))
  for addr in "$KAFKA_SASL_SSL_BOOTSTRAP" "$KAFKA_SSL_BOOTSTRAP" "$KAFKA_SASL_PLAINTEXT_BOOTSTRAP"; do
    until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()' \
        "${addr##*:}" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        log "listener $addr does not accept connections; last 50 lines of $dir/kafka.log:"
        tail -n 50 "$dir/kafka.log" >&2
        die "Kafka's secured listeners did not come up"
      fi
      sleep 0.25
    done
  done
}

# --- Kafka's own command-line tools -----------------------------------------------------------

# kafka-tools-<version>.jar (ConsoleProducer, ConsoleConsumer, TopicCommand, ProducerPerformance,
# ...) is not a dependency of the broker; resolve that one jar once, next to the broker's libs
# (its other runtime dependencies, Connect and Jetty, are not needed by these tools).
TOOLS_DIR=$CACHE_DIR/tools
resolve_tools() {
  [[ -f $TOOLS_DIR/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found; it is needed once to resolve kafka-tools"
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.lock"
  flock 9
  if [[ ! -f $TOOLS_DIR/.complete ]]; then
    log "resolving org.apache.kafka:kafka-tools:$KAFKA_VERSION (once)"
    rm -rf "$TOOLS_DIR.tmp"
    if ! mvn -q -B -Dstyle.color=never dependency:copy \
        -Dartifact="org.apache.kafka:kafka-tools:$KAFKA_VERSION" \
        -DoutputDirectory="$TOOLS_DIR.tmp" </dev/null 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2; then
      die "Maven could not resolve org.apache.kafka:kafka-tools:$KAFKA_VERSION"
    fi
    [[ -f $TOOLS_DIR.tmp/kafka-tools-$KAFKA_VERSION.jar ]] \
      || die "resolution finished but kafka-tools-$KAFKA_VERSION.jar is missing"
    printf '%s\n' "# Kafka's command-line tools: warnings and errors to stderr." "status = warn" \
      "appender.err.type = Console" "appender.err.name = STDERR" "appender.err.target = SYSTEM_ERR" \
      "appender.err.layout.type = PatternLayout" "appender.err.layout.pattern = [%d] %p %m (%c)%n" \
      "rootLogger.level = WARN" "rootLogger.appenderRef.err.ref = STDERR" \
      >"$TOOLS_DIR.tmp/log4j2.properties"
    touch "$TOOLS_DIR.tmp/.complete"
    rm -rf "$TOOLS_DIR"
    mv "$TOOLS_DIR.tmp" "$TOOLS_DIR"
  fi
  exec 9>&-
}

cmd_tool() {
  (($# > 0)) || usage
  command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+)"
  resolve_libs
  resolve_tools
  # shellcheck disable=SC2086 # option strings are split on purpose
  exec java $TOOL_OPTS -Dlog4j2.configurationFile="$TOOLS_DIR/log4j2.properties" \
    -cp "$LIBS_DIR/*:$TOOLS_DIR/kafka-tools-$KAFKA_VERSION.jar" "$@"
}

# Launch the broker of run folder $1 in the background (its pid into $1/kafka.pid, its output
# appended to $1/kafka.log) and wait until it answers on port $2, or die with its log tail.
launch_and_wait() {
  local dir=$1 broker_port=$2 pid deadline
  # shellcheck disable=SC2086 # option strings are split on purpose
  nohup java -server $HEAP_OPTS $GC_OPTS \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/kafka.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/kafka.pid"

  deadline=$((SECONDS + START_TIMEOUT))
  until metadata_ok "$broker_port"; do
    if ! alive "$pid"; then
      log "the broker exited during startup; last 50 lines of $dir/kafka.log:"
      tail -n 50 "$dir/kafka.log" >&2
      die "Kafka did not start"
    fi
    if ((SECONDS >= deadline)); then
      log "no metadata answer within ${START_TIMEOUT}s; last 50 lines of $dir/kafka.log:"
      tail -n 50 "$dir/kafka.log" >&2
      die "Kafka did not start"
    fi
    sleep 0.25
  done
}

# --- outages: stop the broker keeping its data and ports, start it again ----------------------

# The run folder of `down`/`up`: $1 or $KAFKA_RUN_DIR, which must be one `start` set up.
run_folder() {
  local dir=${1:-${KAFKA_RUN_DIR:-}}
  [[ -n $dir ]] || die "give the run folder or set KAFKA_RUN_DIR"
  [[ -d $dir ]] || die "$dir does not exist"
  dir=$(cd "$dir" && pwd)
  [[ -f $dir/server.properties && -f $dir/env ]] \
    || die "$dir does not look like a kafka.sh run folder"
  printf '%s\n' "$dir"
}

# Stop the broker of a run folder but keep the folder, its data and its ports for `up`.
# With --kill it is killed with SIGKILL (a crash) instead of stopped with SIGTERM.
down_broker() {
  local dir pid
  if [[ ${1:-} == --kill ]]; then
    shift
    dir=$(run_folder "${1:-}")
    [[ -f $dir/kafka.pid ]] || return 0
    pid=$(<"$dir/kafka.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" \
        && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *kafka.Kafka*"$dir/server.properties"* ]]; then
      log "killing broker (pid $pid) with SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
  else
    dir=$(run_folder "${1:-}")
    kill_broker "$dir"
  fi
  log "broker of $dir is down (data kept; \`scripts/kafka.sh up $dir\` starts it again)"
}

# Start the broker of a run folder again, on the same ports and with the same data.
up_broker() {
  local dir port
  dir=$(run_folder "${1:-}")
  if [[ -f $dir/kafka.pid ]] && alive "$(<"$dir/kafka.pid")"; then
    die "the broker of $dir is already running"
  fi
  resolve_libs
  # shellcheck disable=SC1091 # written by start_broker
  KAFKA_BOOTSTRAP=$(. "$dir/env" && printf '%s' "$KAFKA_BOOTSTRAP")
  port=${KAFKA_BOOTSTRAP##*:}
  RUN_DIR=$dir
  trap on_start_exit EXIT
  log "starting Kafka $KAFKA_VERSION again on $KAFKA_BOOTSTRAP"
  launch_and_wait "$dir" "$port"
  if grep -q '^KAFKA_SASL_SSL_BOOTSTRAP=' "$dir/env"; then
    # shellcheck disable=SC1091 # written by start_broker
    eval "$(. "$dir/env" && declare -p KAFKA_SASL_SSL_BOOTSTRAP KAFKA_SSL_BOOTSTRAP \
      KAFKA_SASL_PLAINTEXT_BOOTSTRAP)"
    wait_secure_listeners "$dir"
  fi
  trap - EXIT
  log "broker ready again on $KAFKA_BOOTSTRAP (pid $(<"$dir/kafka.pid"))"
}

# --- 5. stop ----------------------------------------------------------------------------------

stop_broker() {
  local dir=${1:-${KAFKA_RUN_DIR:-}}
  [[ -n $dir ]] || die "stop: give the run folder or set KAFKA_RUN_DIR"
  if [[ ! -d $dir ]]; then
    log "stop: $dir does not exist; nothing to do"
    return 0
  fi
  dir=$(cd "$dir" && pwd)
  # Refuse to delete a folder this script did not set up.
  [[ -f $dir/server.properties || -f $dir/kafka.pid ]] \
    || die "stop: $dir does not look like a kafka.sh run folder; not removing it"
  kill_broker "$dir"
  rm -rf "$dir"
  log "stopped; removed $dir"
}

cmd_run() {
  [[ ${1:-} == -- ]] && shift
  (($# > 0)) || usage
  start_broker ""
  trap 'rc=$?; trap - EXIT; stop_broker "$RUN_DIR"; exit "$rc"' EXIT
  export KAFKA_BOOTSTRAP KAFKA_RUN_DIR=$RUN_DIR
  if ((SECURE)); then export "${SECURE_VARS[@]}"; fi
  local status=0
  "$@" || status=$?
  exit "$status"
}

trap 'exit 130' INT
trap 'exit 143' TERM

case ${1:-} in
  start)
    shift
    start_broker "${1:-}"
    # One line; KAFKA_RUN_DIR rides along so that a later `scripts/kafka.sh stop` finds the broker.
    if ((SECURE)); then
      printf 'export KAFKA_BOOTSTRAP=%s KAFKA_RUN_DIR=%q' "$KAFKA_BOOTSTRAP" "$RUN_DIR"
      for var in "${SECURE_VARS[@]}"; do printf ' %s=%q' "$var" "${!var}"; done
      printf '\n'
    else
      printf 'export KAFKA_BOOTSTRAP=%s KAFKA_RUN_DIR=%q\n' "$KAFKA_BOOTSTRAP" "$RUN_DIR"
    fi
    ;;
  stop)
    shift
    stop_broker "${1:-}"
    ;;
  run)
    shift
    cmd_run "$@"
    ;;
  down)
    shift
    down_broker "$@"
    ;;
  up)
    shift
    up_broker "${1:-}"
    ;;
  tool)
    shift
    cmd_tool "$@"
    ;;
  *)
    usage
    ;;
esac
