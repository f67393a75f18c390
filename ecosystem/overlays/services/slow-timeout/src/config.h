/* Build-time settings of services. */
#ifndef SERVICES_CONFIG_H
#define SERVICES_CONFIG_H

#define DEFAULT_PORT 8080
#define DEFAULT_BIND "127.0.0.1"

/* Seconds a client may take to send its request or read the answer: the server handles one
 * connection at a time, so a slow client must not hold it for long. */
#define CLIENT_TIMEOUT_SECONDS 5

#endif
