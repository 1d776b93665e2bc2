// The backend module: registers the stackpass actions with the scaffolder
// through its actions extension point (new backend system).

import { coreServices, createBackendModule } from '@backstage/backend-plugin-api';
import { scaffolderActionsExtensionPoint } from '@backstage/plugin-scaffolder-node';
import { createStackpassDecideAction } from './actions/decide';
import { createStackpassRunAction } from './actions/run';

export const scaffolderModuleStackpass = createBackendModule({
  pluginId: 'scaffolder',
  moduleId: 'stackpass',
  register(env) {
    env.registerInit({
      deps: {
        scaffolder: scaffolderActionsExtensionPoint,
        config: coreServices.rootConfig,
      },
      async init({ scaffolder, config }) {
        const baseUrl = config.getString('stackpass.baseUrl');
        scaffolder.addActions(
          createStackpassDecideAction({ baseUrl }),
          createStackpassRunAction({ baseUrl }),
        );
      },
    });
  },
});
