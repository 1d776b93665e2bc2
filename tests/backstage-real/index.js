'use strict';

// A minimal, real Backstage backend (new backend system) for stackpass's
// wire-format check: the auth plugin with the guest provider (signs in as
// user:default/jane through the catalog, no browser) and the catalog plugin fed
// from ./catalog.yaml, on an in-memory SQLite database, on 127.0.0.1:$PORT.
//
// Env: PORT (required), BACKSTAGE_STATIC_TOKEN (required, >= 8 non-space
// characters: Backstage's own rule for static external-access tokens).
//
// With STACKPASS_URL and STACKPASS_SCAFFOLDER_MODULE (the path of the built
// backstage/plugin-scaffolder-backend-module-stackpass) also set, the
// scaffolder plugin runs too, with stackpass's module pointed at the broker and
// the templates in ./templates.yaml in the catalog.

const path = require('node:path');
const { createBackend } = require('@backstage/backend-defaults');
const {
  coreServices,
  createServiceFactory,
} = require('@backstage/backend-plugin-api');
const { ConfigReader } = require('@backstage/config');

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('PORT must be set to a TCP port number');
  process.exit(2);
}
const staticToken = process.env.BACKSTAGE_STATIC_TOKEN;
if (!staticToken) {
  console.error('BACKSTAGE_STATIC_TOKEN must be set');
  process.exit(2);
}

const baseUrl = `http://127.0.0.1:${port}`;
const stackpassUrl = process.env.STACKPASS_URL;
const scaffolderModule = process.env.STACKPASS_SCAFFOLDER_MODULE;
const withScaffolder = Boolean(stackpassUrl && scaffolderModule);

// The whole app-config, in code: no app-config.yaml is read, so nothing in the
// working directory or APP_CONFIG_* variables can change what is checked.
const config = {
  app: { baseUrl }, // the auth plugin requires it (allowed origins, redirects)
  backend: {
    baseUrl,
    listen: { host: '127.0.0.1', port },
    database: {
      client: 'better-sqlite3',
      connection: ':memory:',
    },
    auth: {
      externalAccess: [
        {
          type: 'static',
          options: { token: staticToken, subject: 'stackpass-check' },
        },
      ],
    },
  },
  auth: {
    environment: 'development',
    providers: {
      guest: {
        userEntityRef: 'user:default/jane',
        // The guest provider refuses to sign anyone in unless NODE_ENV is
        // "development" or this is set; set it so NODE_ENV does not matter.
        dangerouslyAllowOutsideDevelopment: true,
      },
    },
  },
  catalog: {
    rules: [
      {
        allow: ['Component', 'User', 'Group', 'Location'].concat(
          withScaffolder ? ['Template'] : [],
        ),
      },
    ],
    locations: [
      { type: 'file', target: path.resolve(__dirname, 'catalog.yaml') },
    ].concat(
      withScaffolder
        ? [
            { type: 'file', target: path.resolve(__dirname, 'templates.yaml') },
            // The module README's example template, to show the catalog takes it.
            {
              type: 'file',
              target: path.resolve(scaffolderModule, 'template.yaml'),
            },
          ]
        : [],
    ),
  },
  ...(withScaffolder ? { stackpass: { baseUrl: stackpassUrl } } : {}),
};

const backend = createBackend();
backend.add(
  createServiceFactory({
    service: coreServices.rootConfig,
    deps: {},
    factory: () => new ConfigReader(config, 'stackpass-check'),
  }),
);
backend.add(require('@backstage/plugin-auth-backend'));
backend.add(require('@backstage/plugin-auth-backend-module-guest-provider'));
backend.add(require('@backstage/plugin-catalog-backend'));
if (withScaffolder) {
  backend.add(
    require('@backstage/plugin-catalog-backend-module-scaffolder-entity-model'),
  );
  backend.add(require('@backstage/plugin-scaffolder-backend'));
  // What a Backstage app writes as
  // backend.add(import('@stackpass/plugin-scaffolder-backend-module-stackpass')).
  backend.add(require(path.resolve(scaffolderModule)));
}
backend.start().catch(err => {
  console.error('backend failed to start:', err);
  process.exit(1);
});
