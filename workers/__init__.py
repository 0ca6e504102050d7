"""The bundled tap modules (the seed's twisted.tap package): echo, daytime, web, hello, telnet."""
