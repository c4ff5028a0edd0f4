#!/usr/bin/env bash
# A CA and a broker certificate for Kafka's SASL_SSL listener, with openssl.
#
#   scripts/make-certs.sh OUT_DIR [HOST ...]
#
# Writes to OUT_DIR (mode 0700, files 0600 except the CA certificate):
#   ca.pem                 the CA certificate: what clients trust (ssl.truststore.location
#                          with ssl.truststore.type=PEM, or ssl.ca.location)
#   ca-key.pem             the CA's private key: keep it off the brokers
#   broker-keystore.pem    the broker's PKCS#8 key + certificate + CA (ssl.keystore.type=PEM)
# The broker certificate names localhost, 127.0.0.1 and every HOST given (e.g. "kafka"
# for the compose network): clients check the name they connect to.
# An existing OUT_DIR/ca.pem is kept, so re-running adds a broker certificate under the
# same CA.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [HOST ...]" >&2
  exit 2
fi
out=$1
shift
command -v openssl >/dev/null || { echo "make-certs: openssl not found on PATH" >&2; exit 2; }
umask 077
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
days=825
san="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do
  if [[ $h =~ ^[0-9.]+$ ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days "$days" \
    -subj "/CN=mynapoint local CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey rsa:2048 -nodes -keyout broker-key.tmp -out broker.csr \
  -subj "/CN=${1:-localhost}" 2>/dev/null
# Kafka's PEM keystore reads PKCS#8 only ("BEGIN PRIVATE KEY")
openssl pkcs8 -topk8 -nocrypt -in broker-key.tmp -out broker-key.pem
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > broker.ext
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
  -out broker-cert.pem -days "$days" -extfile broker.ext 2>/dev/null
cat broker-key.pem broker-cert.pem ca.pem > broker-keystore.pem
rm -f broker-key.tmp broker.csr broker.ext ca.srl broker-key.pem
chmod 644 ca.pem
echo "$out: ca.pem, broker-keystore.pem ($san)"
