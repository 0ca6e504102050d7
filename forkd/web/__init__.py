"""forkd.web: HTTP/1.x serving in the shape of twisted.web.

`server.Site(resource)` is the Factory; `resource.Resource` the tree it serves;
`static.File(path)` serves a directory; `vhost.NamedVirtualHost` picks a tree by Host.
"""
