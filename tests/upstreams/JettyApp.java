// A servlet application on Jetty 9.4 (Debian's libjetty9-java), as a Java
// API behind Portcullis would run: one connector per gateway route named
// on the command line, each on a loopback port the kernel picks, printed
// as "<route> <port>" once the server has started.
//
// Each route name other than "root" is also a servlet mapped to
// "/<name>/*" ("root" is the default servlet, "/"), so the container's own
// path mapping (which decodes %2F and cuts ";parameters" off segments)
// picks the location. The answer is
// "route=<route> location=<location> path=<servlet path + path info>".

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public class JettyApp {
    public static void main(String[] args) throws Exception {
        Server server = new Server();
        ConcurrentHashMap<Integer, String> routeOfPort = new ConcurrentHashMap<>();
        List<ServerConnector> connectors = new ArrayList<>();
        for (String route : args) {
            ServerConnector connector = new ServerConnector(server);
            connector.setHost("127.0.0.1");
            connector.setPort(0);
            connector.setName(route);
            server.addConnector(connector);
            connectors.add(connector);
        }
        ServletContextHandler context = new ServletContextHandler();
        context.setContextPath("/");
        for (String location : args) {
            HttpServlet servlet = new HttpServlet() {
                @Override
                protected void service(HttpServletRequest req, HttpServletResponse res) throws IOException {
                    String route = routeOfPort.get(req.getLocalPort());
                    String info = req.getPathInfo() == null ? "" : req.getPathInfo();
                    res.setContentType("text/plain");
                    res.getWriter().print("route=" + route + " location=" + location + " path=" + req.getServletPath() + info + "\n");
                }
            };
            context.addServlet(new ServletHolder(servlet), location.equals("root") ? "/" : "/" + location + "/*");
        }
        server.setHandler(context);
        server.start();
        for (ServerConnector connector : connectors) {
            routeOfPort.put(connector.getLocalPort(), connector.getName());
        }
        for (ServerConnector connector : connectors) {
            System.out.println(connector.getName() + " " + connector.getLocalPort());
        }
        System.out.flush();
        server.join();
    }
}
