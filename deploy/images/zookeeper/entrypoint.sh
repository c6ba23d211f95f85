#!/bin/bash
# Standalone ZooKeeper from Debian's jars. Honours the environment variable names of the official `zookeeper`
# image that docker-compose.yml sets, so the same compose file runs either image.
set -euo pipefail

conf_dir="${ZOO_CONF_DIR:-/tmp/zookeeper-conf}"
data_dir="${ZOO_DATA_DIR:-/data}"
mkdir -p "$conf_dir" "$data_dir"

cat >"$conf_dir/zoo.cfg" <<CFG
tickTime=${ZOO_TICK_TIME:-2000}
initLimit=${ZOO_INIT_LIMIT:-5}
syncLimit=${ZOO_SYNC_LIMIT:-2}
dataDir=${data_dir}
clientPort=${ZOO_PORT:-2181}
maxClientCnxns=${ZOO_MAX_CLIENT_CNXNS:-60}
admin.enableServer=${ZOO_ADMINSERVER_ENABLED:-false}
4lw.commands.whitelist=${ZOO_4LW_COMMANDS_WHITELIST:-srvr}
CFG

# Console logging only: a container's log is its stdout.
cat >"$conf_dir/log4j.properties" <<LOG
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1} - %m%n
LOG

# The server class is run directly: Debian's zkServer.sh turns logging off and expects systemd-style paths.
exec java -Xmx"${ZOO_HEAP:-256m}" \
  -cp "$conf_dir:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
  org.apache.zookeeper.server.ZooKeeperServerMain "$conf_dir/zoo.cfg"
